"""MixUp and CutMix (minivit/data/transforms.py: mix_batch) and the soft-target cross-entropy they train with."""
import numpy as np
import pytest

import minivit as mv
from minivit.train import optim
from minivit.data import mix_batch
from minivit.train import TrainConfig, Trainer
from helpers import check_grads, full_and_resumed, rel_error, toy_dataset

rng = np.random.default_rng(0)


def soft_targets(B, K):
    t = rng.random((B, K)) ** 3
    return t / t.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_soft_target_gradient(eps):
    z, t = rng.standard_normal((4, 6)) * 2, soft_targets(4, 6)
    loss, dz = mv.cross_entropy(z, t, eps)
    check_grads(lambda: float(mv.cross_entropy(z, t, eps)[0]), {"z": z}, {"z": dz})


def test_one_hot_targets_give_the_integer_label_loss():
    z, y = rng.standard_normal((5, 7)), rng.integers(0, 7, 5)
    for eps in (0.0, 0.2):
        hard, soft = mv.cross_entropy(z, y, eps), mv.cross_entropy(z, np.eye(7)[y], eps)
        assert abs(hard[0] - soft[0]) < 1e-14 and rel_error(hard[1], soft[1]) < 1e-14


def test_mixed_loss_is_the_mix_of_the_losses():
    """The loss is linear in the target: l(lam a + (1 - lam) b) = lam l(a) + (1 - lam) l(b)."""
    z, a, b, lam = rng.standard_normal((3, 5)), rng.integers(0, 5, 3), rng.integers(0, 5, 3), 0.3
    mixed = mv.cross_entropy(z, lam * np.eye(5)[a] + (1 - lam) * np.eye(5)[b], 0.1)[0]
    assert abs(mixed - (lam * mv.cross_entropy(z, a, 0.1)[0] + (1 - lam) * mv.cross_entropy(z, b, 0.1)[0])) < 1e-14


def test_soft_targets_match_torch():
    torch = pytest.importorskip("torch")
    z, t = rng.standard_normal((4, 6)), soft_targets(4, 6)
    tz = torch.tensor(z, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(tz, torch.tensor(t), label_smoothing=0.1)
    ref.backward()
    loss, dz = mv.cross_entropy(z, t, 0.1)
    assert abs(float(loss) - ref.item()) < 1e-12 and rel_error(dz, tz.grad.numpy()) < 1e-12


def test_bad_targets_are_named():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"shape \(3,\) \(integers\) or \(3, 4\)"):
        mv.cross_entropy(z, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="floating soft targets"):
        mv.cross_entropy(z, np.zeros((3, 4), dtype=int))


def test_mixup_blends_each_image_with_the_reversed_batch():
    x, y = rng.standard_normal((6, 3, 8, 8)), rng.integers(0, 10, 6)
    mixed, t = mix_batch(x, y, 10, np.random.default_rng(1), mixup=0.8)
    lam = next(t[i, y[i]] for i in range(6) if y[i] != y[5 - i])
    np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-12)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert 0 < lam < 1


def test_cutmix_pastes_a_box_and_the_targets_count_its_area():
    x, y = rng.standard_normal((4, 3, 16, 16)) + 5, np.array([0, 1, 2, 3])
    for seed in range(20):
        mixed, t = mix_batch(x, y, 4, np.random.default_rng(seed), cutmix=1.0)
        pasted = np.all(mixed == x[::-1], axis=1) & ~np.all(mixed == x, axis=1)   # (B, H, W): from the other image
        kept = np.all(mixed == x, axis=1)
        assert np.all(pasted | kept)                                               # every pixel is one or the other
        rows, cols = np.flatnonzero(pasted[0].any(axis=1)), np.flatnonzero(pasted[0].any(axis=0))
        if len(rows):                                                              # the pasted pixels form one box
            assert pasted[0].sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        np.testing.assert_allclose(t[:, :4].diagonal(), 1 - pasted.mean(axis=(1, 2)))  # own label: the kept share


def test_mix_batch_rejects_no_mixing():
    with pytest.raises(ValueError, match="one of them above 0"):
        mix_batch(np.zeros((2, 3, 4, 4)), np.zeros(2, int), 3, np.random.default_rng(0))


def test_trainer_with_mixup_and_cutmix_records_them(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    data = toy_dataset(16, 8)
    tcfg = TrainConfig(epochs=1, batch_size=8, mixup=0.8, cutmix=1.0, threads=2)
    tr = Trainer(cfg, tcfg, data, tmp_path, progress=False, log=lambda *_: None, plots=False)
    x, y = tr._batch(0, 0)
    assert y.shape == (8, 5) and np.allclose(y.sum(axis=1), 1) and (y.max(axis=1) < 1).any()
    tr.fit()
    meta = mv.load_checkpoint(tmp_path / "checkpoint.npz")[3]
    assert meta["train_config"]["mixup"] == 0.8 and meta["train_config"]["cutmix"] == 1.0
    assert np.isfinite(tr.history[0]["train_loss"])
    with pytest.raises(ValueError, match="mixup"):
        TrainConfig(mixup=-1)


def test_ema_of_the_weights():
    """After n updates towards a fixed p, the average is p + decay^n (p0 - p)."""
    p0, p = {"w": np.zeros(3)}, {"w": np.array([1.0, 2.0, -4.0])}
    ema = optim.EMA(p0, 0.9)
    for _ in range(5):
        ema.update(p)
    np.testing.assert_allclose(ema.params["w"], p["w"] + 0.9 ** 5 * (p0["w"] - p["w"]), rtol=1e-12)
    assert np.all(p0["w"] == 0)                       # the starting weights are copied, not aliased
    with pytest.raises(ValueError, match="decay"):
        optim.EMA(p0, 1.0)


def test_trainer_ema_is_evaluated_saved_and_resumed(tmp_path):
    tcfg = TrainConfig(epochs=2, batch_size=8, ema=0.5, threads=2)
    full, second = full_and_resumed(mv.ViTConfig.preset("test"), tcfg, toy_dataset(16, 8), tmp_path)
    assert all("ema_test_acc" in h for h in full.history)
    assert any(not np.array_equal(full.ema.params[k], full.params[k]) for k in full.params)
    for k in full.params:
        np.testing.assert_array_equal(second.ema.params[k], full.ema.params[k])

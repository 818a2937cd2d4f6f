"""The comparison CNN (minivit/models/cnn.py): its layers' gradients, PyTorch parity, training and checkpoints."""
import numpy as np
import pytest

import minivit as mv
from minivit.io.checkpoint import CheckpointError, load_checkpoint
from minivit.models.cnn import (CNNConfig, backward, count_params, forward, global_avg_pool_backward,
                         global_avg_pool_forward, init_params, maxpool2x2_backward, maxpool2x2_forward)
from minivit.config import ConfigError
from minivit.train import Engine, TrainConfig, Trainer
from helpers import Crash, check_grads, crash_after_first_epoch, rel_error, scalar_of, toy_dataset

rng = np.random.default_rng(0)
SMALL = CNNConfig(image_size=8, num_classes=5, channels=(4, 6, 8))


def test_maxpool_picks_each_windows_largest_and_routes_the_gradient_there():
    x = np.arange(16.0).reshape(1, 1, 4, 4)[:, :, :, ::-1].copy()  # largest of each window: its top-left
    y, cache = maxpool2x2_forward(x)
    np.testing.assert_array_equal(y[0, 0], [[7, 5], [15, 13]])
    dx = maxpool2x2_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), cache)
    want = np.zeros((4, 4))
    want[1, 0], want[1, 2], want[3, 0], want[3, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, 0], want)
    tie = np.zeros((1, 1, 2, 2))        # a tie (all zero, as after a ReLU): the first pixel wins, as in torch
    np.testing.assert_array_equal(maxpool2x2_backward(np.ones((1, 1, 1, 1)), maxpool2x2_forward(tie)[1])[0, 0],
                                  [[1, 0], [0, 0]])


def test_pool_gradients():
    x = rng.standard_normal((2, 3, 6, 4))  # continuous draws: no ties, so max pooling is differentiable here
    y, cache = maxpool2x2_forward(x)
    R = rng.standard_normal(y.shape)
    check_grads(scalar_of(lambda: maxpool2x2_forward(x)[0], R), {"x": x}, {"x": maxpool2x2_backward(R, cache)})
    y, shape = global_avg_pool_forward(x)
    R = rng.standard_normal(y.shape)
    check_grads(scalar_of(lambda: global_avg_pool_forward(x)[0], R), {"x": x},
                {"x": global_avg_pool_backward(R, shape)})


def test_whole_cnn_gradient_float64():
    params = init_params(SMALL, seed=1, dtype="float64")
    params["head.w"] = rng.standard_normal(params["head.w"].shape)  # a zero head would stop every other gradient
    params.update({k: rng.standard_normal(v.shape) * 0.1 for k, v in params.items() if k.endswith(".b")})
    x = rng.standard_normal((3, 3, 8, 8))
    logits, cache = forward(params, x, SMALL)
    R = rng.standard_normal(logits.shape)
    grads = backward(R, cache)
    assert set(grads) == set(params)
    check_grads(scalar_of(lambda: forward(params, x, SMALL)[0], R), params, grads)


def test_cnn_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    params = init_params(SMALL, seed=2, dtype="float64")
    params["head.w"] = rng.standard_normal(params["head.w"].shape)
    x = rng.standard_normal((4, 3, 8, 8))
    logits, cache = forward(params, x, SMALL)
    R = rng.standard_normal(logits.shape)
    grads = backward(R, cache)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    h = torch.tensor(x)
    for i in range(3):
        h = F.relu(F.conv2d(h, t[f"conv.{i}.w"], t[f"conv.{i}.b"], padding=1))
        h = F.max_pool2d(h, 2) if i < 2 else h.mean(dim=(2, 3))
    out = h @ t["head.w"] + t["head.b"]
    out.backward(torch.tensor(R))
    assert rel_error(logits, out.detach().numpy()) < 1e-10
    for k in params:
        assert rel_error(grads[k], t[k].grad.numpy()) < 1e-10, k


def test_config_checks_and_round_trip():
    assert count_params(CNNConfig()) == 3 * 32 * 9 + 32 + 32 * 64 * 9 + 64 + 64 * 128 * 9 + 128 + 128 * 10 + 10
    assert CNNConfig.from_dict(CNNConfig().to_dict()) == CNNConfig()
    with pytest.raises(ConfigError, match="multiple of 4"):
        CNNConfig(image_size=30)
    with pytest.raises(ConfigError, match="channels"):
        CNNConfig(channels=())
    with pytest.raises(ValueError, match=r"CNN input must be \(B, 3, 32, 32\)"):
        forward(init_params(CNNConfig()), np.zeros((2, 3, 16, 16), np.float32), CNNConfig())


def test_engine_shards_give_the_full_batch_gradient():
    # float64: the convolutions' gradients are tiny here, and in float32 their rounding would differ
    # between one product over 10 images and two over 5 (MKL's kernels depend on the size)
    params = {k: v.astype(np.float64) for k, v in init_params(SMALL, seed=0).items()}
    params["head.w"] += 0.05
    x, y = rng.standard_normal((10, 3, 8, 8)), rng.integers(0, 5, 10)
    one = Engine(SMALL, 1).loss_and_grads(params, x, y, 0.1, 0, 0)
    two = Engine(SMALL, 2).loss_and_grads(params, x, y, 0.1, 0, 0)
    assert abs(one[0] - two[0]) < 1e-12 and one[1] == two[1]
    for k in params:
        assert rel_error(one[2][k], two[2][k]) < 1e-10, k


def test_trainer_trains_and_resumes_a_cnn(tmp_path):
    """The trainer's recipe runs the CNN unchanged; an interrupted run resumed from its checkpoint
    ends where an uninterrupted one does; ViT commands refuse a CNN checkpoint."""
    tcfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0.5, seed=3, threads=2)
    quiet = dict(progress=False, log=lambda *_: None, plots=False)
    full = Trainer(SMALL, tcfg, toy_dataset(), tmp_path / "full", **quiet)
    full.fit()
    assert len(full.history) == 2 and not (tmp_path / "full" / "curves.png").exists()
    with pytest.raises(Crash):
        Trainer(SMALL, tcfg, toy_dataset(), tmp_path / "half", on_epoch_end=crash_after_first_epoch, **quiet).fit()
    second = Trainer(SMALL, tcfg, toy_dataset(), tmp_path / "half", resume=True, **quiet)
    assert second.step == 3
    second.fit()
    for k in full.params:
        np.testing.assert_array_equal(second.params[k], full.params[k])
    params, cfg, _, _ = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    assert cfg == SMALL
    with pytest.raises(CheckpointError, match="CNN checkpoint; a ViT one is needed"):
        load_checkpoint(tmp_path / "full" / "checkpoint.npz", family="vit")
    with pytest.raises(CheckpointError, match="CNN checkpoint; a ViT one is needed"):
        load_checkpoint(tmp_path / "full" / "checkpoint.npz", mv.ViTConfig.preset("test"))

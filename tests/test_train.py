"""Checkpoints, exact resume after a real Ctrl-C, the NaN guard, and the training engine."""
import os
import signal

import numpy as np
import pytest

import minivit as mv
from minivit.models import classify, objectives
from minivit.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivit.train import Engine, TrainConfig, Trainer, TrainingDiverged
from helpers import toy_dataset


def small_run(tmp_path, name, **kw):
    cfg = mv.ViTConfig.preset("test", dropout=0.1)
    tcfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0.5, seed=3, threads=2, **kw)
    return Trainer(cfg, tcfg, toy_dataset(), tmp_path / name, progress=False, log=lambda *_: None)


def test_checkpoint_round_trip(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=1)
    opt = mv.AdamW(lr=1e-3)
    opt.step(params, {k: np.ones_like(v) for k, v in params.items()})
    path = save_checkpoint(tmp_path / "c.npz", params, cfg, opt.state_dict(), {"step": 7, "note": "x"})
    p2, cfg2, state, meta = load_checkpoint(path, cfg)
    assert cfg2 == cfg and meta["step"] == 7 and state["t"] == 1
    assert all(np.array_equal(p2[k], params[k]) for k in params)
    assert all(np.array_equal(state["m." + k], opt.m[k]) for k in params)
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert "meta" in z.files


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    cfg = mv.ViTConfig.preset("test")
    path = save_checkpoint(tmp_path / "c.npz", mv.init_params(cfg, seed=1), cfg, meta={"step": 1})
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(CheckpointError, match="disk full.*previous checkpoint is kept"):
        save_checkpoint(path, mv.init_params(cfg, seed=2), cfg, meta={"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no partial file left behind
    assert load_checkpoint(path)[3]["step"] == 1


def test_checkpoint_from_a_different_config(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    path = save_checkpoint(tmp_path / "c.npz", mv.init_params(cfg), cfg)
    with pytest.raises(CheckpointError, match="different model.*dim: checkpoint 8, requested 16"):
        load_checkpoint(path, mv.ViTConfig.preset("test", dim=16))


def test_corrupted_checkpoint(tmp_path):
    bad = tmp_path / "c.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="not a readable minivit checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")


def test_engine_shards_give_the_full_batch_gradient():
    """Two data-parallel shards must reproduce the one-shard gradient of the batch mean, in float32."""
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=0)
    params["head.w"] += 0.05
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 3, 8, 8)).astype(np.float32), rng.integers(0, 5, 10)
    l1, c1, g1 = Engine(cfg, 1).loss_and_grads(params, x, y, 0.1, 0, 0)
    l2, c2, g2 = Engine(cfg, 3).loss_and_grads(params, x, y, 0.1, 0, 0)
    assert c1 == c2 and abs(float(l1) - float(l2)) < 1e-6
    for k in g1:
        assert g2[k].dtype == np.float32, k  # no silent promotion to float64
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_training_in_several_shards_per_thread_gives_the_full_batch_gradient(monkeypatch):
    """Shards of about TRAIN_TOKENS_PER_SHARD tokens, several per thread, taken in turn: the sum of
    their scaled gradients is the one-shard gradient of the batch mean (float64, to rounding)."""
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    params["head.w"] = rng.standard_normal(params["head.w"].shape)    # no ties among the logits
    x, y = rng.standard_normal((11, 3, 8, 8)), rng.integers(0, 5, 11)
    l1, c1, g1 = Engine(cfg, 1).loss_and_grads(params, x, y, 0.1, 0, 0)        # 11 images: one shard
    monkeypatch.setattr(Engine, "TRAIN_TOKENS_PER_SHARD", 2 * (cfg.num_patches + 1))
    sizes = []
    step = classify.step
    monkeypatch.setattr(classify, "step", lambda p, xs, *a: sizes.append(len(xs)) or step(p, xs, *a))
    engine = Engine(cfg, 2)
    l2, c2, g2 = engine.loss_and_grads(params, x, y, 0.1, 0, 0)
    engine.close()
    assert sorted(sizes) == [1, 2, 2, 2, 2, 2]                                  # six shards: three for each thread
    assert c1 == c2 and abs(float(l1) - float(l2)) < 1e-12
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-10, atol=1e-14, err_msg=k)


def test_shards_are_shared_evenly_among_the_threads():
    from minivit.train.engine import shard_slices
    for n, threads, size in [(256, 2, 31), (128, 2, 31), (16, 2, 10), (11, 2, 2), (3, 2, 5), (1, 2, 4), (10, 3, None)]:
        shards = shard_slices(n, threads, size)
        assert shards[0].start == 0 and shards[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))     # in order, no gaps
        rows = [s.stop - s.start for s in shards]
        assert min(rows) >= 1 and max(rows) - min(rows) <= 1, (n, size, rows)
        assert size is None or max(rows) <= size
        assert len(shards) % threads == 0 or len(shards) == n                  # as many for each thread
    assert len(shard_slices(128, 2, 31)) == 6      # five would do, but three on one thread and two on the other


def test_same_seed_same_run(tmp_path):
    a, b = small_run(tmp_path, "a"), small_run(tmp_path, "b")
    a.fit(), b.fit()
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert a.history == [dict(h, elapsed_s=a.history[i]["elapsed_s"], images_per_s=a.history[i]["images_per_s"])
                         for i, h in enumerate(b.history)]


def test_ctrl_c_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    full = small_run(tmp_path, "full")
    full.fit()
    part = small_run(tmp_path, "part")
    original = part.engine.loss_and_grads

    def interrupt_at_step_4(params, x, y, ls, seed, step, **kw):
        if step == 4:  # mid-epoch (3 steps an epoch): a real SIGINT, as Ctrl-C sends
            os.kill(os.getpid(), signal.SIGINT)
        return original(params, x, y, ls, seed, step, **kw)
    part.engine.loss_and_grads = interrupt_at_step_4
    part.fit()
    assert part.interrupted == "Ctrl-C" and part.step == 5 < full.step
    resumed = Trainer(part.cfg, part.tcfg, toy_dataset(), tmp_path / "part", resume=True, progress=False,
                      log=lambda *_: None)
    assert resumed.step == 5
    resumed.fit()
    assert resumed.step == full.step
    for k in full.params:
        np.testing.assert_array_equal(resumed.params[k], full.params[k], err_msg=k)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = small_run(tmp_path, "nan")
    original = run.engine.loss_and_grads

    def nan_at_step_4(params, x, y, ls, seed, step, **kw):
        loss, correct, grads = original(params, x, y, ls, seed, step, **kw)
        return (np.float32("nan") if step == 4 else loss), correct, grads
    run.engine.loss_and_grads = nan_at_step_4
    with pytest.raises(TrainingDiverged, match="loss became nan at step 4 .*epoch 2"):
        run.fit()
    params, _, _, meta = load_checkpoint(run.ckpt_path)
    assert meta["step"] == 3  # the end of epoch 1, saved before the bad step
    assert all(np.isfinite(v).all() for v in params.values())


def test_resume_with_different_settings_is_refused(tmp_path):
    run = small_run(tmp_path, "r")
    run.fit()
    with pytest.raises(ValueError, match="different settings \\(lr\\)"):
        Trainer(run.cfg, TrainConfig(**{**run.tcfg.__dict__, "lr": 1.0}), toy_dataset(), tmp_path / "r",
                resume=True, progress=False, log=lambda *_: None)


def test_wrong_image_size_for_the_model(tmp_path):
    with pytest.raises(ValueError, match="images are 3x8x8 .* model expects 3x32x32"):
        Trainer(mv.ViTConfig.preset("cifar-tiny", num_classes=5), TrainConfig(), toy_dataset(), tmp_path / "x")


def test_history_and_outputs(tmp_path):
    import matplotlib
    backend = matplotlib.get_backend()
    run = small_run(tmp_path, "h")
    hist = run.fit()
    assert matplotlib.get_backend() == backend  # saving plots must not switch a notebook's backend
    assert [h["epoch"] for h in hist] == [1, 2]
    assert all(0.0 <= h["test_acc"] <= 1.0 and np.isfinite(h["train_loss"]) for h in hist)
    for f in ("checkpoint.npz", "metrics.jsonl", "curves.png", "confusion.png", "config.json"):
        assert (tmp_path / "h" / f).stat().st_size > 0, f
    assert len((tmp_path / "h" / "metrics.jsonl").read_text().splitlines()) == 2


def test_inference_in_small_shards_matches_one_forward():
    from minivit.train import Engine
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=3, dtype="float64")
    x = np.random.default_rng(4).standard_normal((11, 3, 8, 8))
    engine = Engine(cfg, threads=2)
    engine.EVAL_TOKENS_PER_SHARD = 2 * (cfg.num_patches + 1)  # two images a shard: six shards
    assert len(engine.shards(11, 2)) == 6
    np.testing.assert_allclose(engine.predict_logits(params, x), mv.forward(params, x, cfg)[0], rtol=1e-12)
    engine.close()


# ---------------------------------------------------------------- --val-split: choosing on held-out training images

def test_hold_out_is_class_balanced_disjoint_and_the_same_for_every_run():
    from minivit.data import DataError, hold_out
    data = toy_dataset(n_train=60)
    rest, val = hold_out(data.train, 12)
    counts = np.bincount(val.labels, minlength=5)
    assert len(val.labels) == 12 and counts.max() - counts.min() <= 1            # 12 over 5 classes: 3,3,2,2,2
    assert len(rest.labels) + len(val.labels) == 60
    seen = {im.tobytes() for im in rest.images}
    assert not any(im.tobytes() in seen for im in val.images)                     # disjoint (random images are unique)
    np.testing.assert_array_equal(hold_out(data.train, 12)[1].images, val.images)   # no training seed involved
    with pytest.raises(DataError, match="between 1 and 59"):
        hold_out(data.train, 60)


def test_a_validation_split_scores_every_epoch_and_reads_the_test_set_once(tmp_path, monkeypatch):
    from minivit.train import trainer as trainer_module
    read = []
    real = trainer_module.evaluate

    def counting(params, cfg, split, *a, **kw):
        read.append(len(split.labels))
        return real(params, cfg, split, *a, **kw)
    monkeypatch.setattr(trainer_module, "evaluate", counting)
    data = toy_dataset(n_train=40, n_test=10)
    tcfg = TrainConfig(epochs=3, batch_size=8, seed=1, threads=1, val_split=10)
    t = Trainer(mv.ViTConfig.preset("test"), tcfg, data, tmp_path / "r", progress=False, log=lambda *_: None)
    assert len(t.data.train.labels) == 30 and len(t.val.labels) == 10
    t._warm_up = lambda: None      # its evaluation of 2 images (compiling the kernels) reads no split
    history = t.fit()
    assert read == [10, 10, 10, 10]                        # validation after each epoch, the test set after the last
    assert all("val_acc" in h for h in history) and [("test_acc" in h) for h in history] == [False, False, True]
    assert t.fingerprint == trainer_module.data_fingerprint(data)   # the data's identity: all of it
    assert (tmp_path / "r" / "curves.png").exists()


def test_a_run_with_a_validation_split_resumes_exactly(tmp_path):
    from helpers import full_and_resumed
    full_and_resumed(mv.ViTConfig.preset("test", dropout=0.1),
                     TrainConfig(epochs=2, batch_size=8, seed=2, threads=2, val_split=8), toy_dataset(n_train=60), tmp_path)


# ---------------------------------------------------------------- --time-budget and --schedule linear

def test_linear_decay_and_cosine_share_the_warmup_and_end_at_min_lr():
    from minivit.train.optim import warmup_decay
    lin = [warmup_decay(s, 100, 10, 1.0, 0.1, "linear") for s in range(101)]
    cos = [warmup_decay(s, 100, 10, 1.0, 0.1, "cosine") for s in range(101)]
    assert lin[:10] == cos[:10] and lin[9] == pytest.approx(1.0)        # the same warmup
    assert lin[55] == pytest.approx(0.1 + 0.9 * (1 - 45 / 90))          # a straight line from 1 to 0.1
    assert lin[100] == pytest.approx(0.1) and cos[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lin[10:], lin[11:]))


def test_a_time_budget_ends_the_run_at_the_deadline_with_the_rate_annealed(tmp_path):
    data = toy_dataset(n_train=256, n_test=10)
    tcfg = TrainConfig(epochs=1, batch_size=8, seed=0, threads=1, warmup_epochs=0.25, time_budget=0.02,   # 1.2 s
                       schedule="linear", min_lr=0.0, val_split=10)
    quiet = dict(progress=False, log=lambda *_: None, plots=False)
    t = Trainer(mv.ViTConfig.preset("test"), tcfg, data, tmp_path / "r", **quiet)
    lrs = []
    real = t._learning_rate
    t._learning_rate = lambda meter: lrs.append(real(meter)) or lrs[-1]
    history = t.fit()
    assert t.elapsed >= 1.2 and t.step > t.steps_per_epoch           # past --epochs 1: the budget decides
    assert "test_acc" in history[-1] and not any("test_acc" in h for h in history[:-1])   # read once, at the end
    warm = t.warmup_steps
    assert lrs[warm - 1] == pytest.approx(tcfg.lr)                      # warmup reached the peak
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))     # then decayed with the clock ...
    assert lrs[-1] < 0.2 * tcfg.lr                                      # ... to near 0 by the deadline
    again = Trainer(mv.ViTConfig.preset("test"), tcfg, data, tmp_path / "r", resume=True, **quiet)
    assert again.fit() == history and again.step == t.step             # a finished budget run stays finished

"""Masked patch prediction (minivit/models/mpp.py): the corruption, the colour targets, every gradient,
the trainer and `minivit pretrain`, and fine-tuning what it produces."""
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import minivit as mv
from minivit.io.checkpoint import load_checkpoint
from minivit.data import Dataset, Split, normalize
from minivit.tools.gradcheck import check_grads
from minivit.models.mpp import (Corruption, colour_targets, corrupt_backward, corrupt_forward, corruption_plan,
                              mpp_backward, mpp_classes, mpp_loss, plan_rows)
from minivit.train import Engine, TrainConfig, Trainer, evaluate

rng = np.random.default_rng(0)
MPP = mv.ViTConfig.preset("test", head="mpp")


def every_kind_plan(B, N, seed=1):
    """A plan drawn with equal odds of [mask], swap and keep, redrawn until it has all three and a
    patch that is shown twice (itself and a swap), so the gradient check covers every path."""
    for s in range(seed, seed + 1000):
        plan = corruption_plan(np.random.default_rng(s), B, N, show=(1 / 3, 1 / 3, 1 / 3))
        kept = np.zeros((B, N), bool)
        kept[np.arange(B)[:, None], plan.chosen] = True
        kept &= ~plan.masked & (plan.source == np.arange(N))
        shown_twice = any(not plan.masked[b, plan.source[b, i]] and plan.source[b, plan.source[b, i]] == plan.source[b, i]
                          for b, i in zip(plan.swap_b, plan.swap_i))
        if plan.masked.any() and len(plan.swap_b) and kept.any() and shown_twice:
            return plan
    raise AssertionError("no plan with every kind of corruption")


def test_plan_corrupts_half_of_every_image_in_the_papers_proportions():
    B, N = 4000, 16
    plan = corruption_plan(np.random.default_rng(0), B, N)
    assert plan.chosen.shape == (B, N // 2)
    assert all(len(set(row)) == N // 2 for row in plan.chosen[:50]) and (np.diff(plan.chosen, axis=1) > 0).all()
    rows = np.arange(B)[:, None]
    chosen = np.zeros((B, N), bool)
    chosen[rows, plan.chosen] = True
    assert not (plan.masked & ~chosen).any()                       # only chosen patches change
    swapped = plan.source != np.arange(N)
    assert not (swapped & ~chosen).any() and not (swapped & plan.masked).any()
    assert set(zip(plan.swap_b, plan.swap_i)) == set(zip(*np.nonzero(swapped)))  # a swap never shows itself
    # 80 / 10 / 10 of 32,000 chosen patches: a binomial share's standard deviation is below 0.0023
    n = chosen.sum()
    for share, expected in ((plan.masked.sum() / n, 0.8), (swapped.sum() / n, 0.1)):
        assert abs(share - expected) < 0.012


def test_corrupted_tokens_show_mask_another_patch_or_themselves():
    B, N, D = 3, 6, 5
    tok = rng.standard_normal((B, N, D))
    mask = rng.standard_normal((1, 1, D))
    plan = every_kind_plan(B, N)
    out, _ = corrupt_forward(tok, mask, plan)
    for b in range(B):
        for i in range(N):
            want = mask[0, 0] if plan.masked[b, i] else tok[b, plan.source[b, i]]
            np.testing.assert_array_equal(out[b, i], want)


def test_corrupt_backward_gradcheck():
    B, N, D = 3, 6, 5
    tok, mask = rng.standard_normal((B, N, D)), rng.standard_normal((1, 1, D))
    R = rng.standard_normal((B, N, D))
    plan = every_kind_plan(B, N)
    dtok, dmask = corrupt_backward(R, plan)
    check_grads(lambda: float((corrupt_forward(tok, mask, plan)[0] * R).sum()), {"tok": tok, "mask": mask},
                {"tok": dtok, "mask": dmask})


def test_colour_targets_are_the_3_bit_mean_colours_of_the_patches():
    cfg = mv.ViTConfig.preset("test")                             # 8x8 images, 4x4 patches: a 2x2 grid
    images = np.zeros((2, 3, 8, 8), np.uint8)
    solid = rng.integers(0, 256, (2, 2, 2, 3))                    # (B, row, col, RGB): one colour per patch
    for b, r, c in np.ndindex(2, 2, 2):
        images[b, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = solid[b, r, c][:, None, None]
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.3, 0.25])
    got = colour_targets(normalize(images, mean, std, dtype="float64"), mean, std, cfg)
    level = np.minimum(solid * 8 // 255, 7)                       # floor(8 v / 255): 255 is the top level, 7
    want = (level[..., 0] * 64 + level[..., 1] * 8 + level[..., 2]).reshape(2, 4)
    np.testing.assert_array_equal(got, want)
    assert mpp_classes(cfg) == 512


def test_colour_targets_average_over_the_patch():
    cfg = mv.ViTConfig.preset("test")
    images = np.zeros((1, 3, 8, 8), np.uint8)
    images[0, :, :2, :4] = 255                                    # the top-left patch: half white, half black
    mean, std = np.zeros(3), np.ones(3)
    got = colour_targets(normalize(images, mean, std, dtype="float64"), mean, std, cfg)
    assert got[0].tolist() == [4 * 64 + 4 * 8 + 4, 0, 0, 0]       # mean 0.5 is level 4 in every channel


@pytest.mark.parametrize("variant", [{}, {"pool": "gap", "pos_embed": "learned2d"}, {"stem_channels": (8,), "stem_strides": (2,), "patch_size": 2}])
def test_mpp_gradcheck_every_parameter(variant):
    # Grey images, so 8 colours: with RGB's 512, a random sample of the colour head's entries holds
    # almost only the ~1e-4 gradients of colours no patch has, where the loss's own rounding
    # (1e-16 * ln 512 / h) is a visible part of the finite difference. The code is the same for any K.
    cfg = mv.ViTConfig.preset("test", head="mpp", in_channels=1, **variant)
    params = mv.init_params(cfg, seed=0, dtype="float64")
    params["mpp_head.w"] = rng.standard_normal(params["mpp_head.w"].shape) * 0.3  # a zero head passes no gradient
    params["mpp_head.b"] = rng.standard_normal(params["mpp_head.b"].shape) * 0.1
    # a zero class token meets LayerNorm as a zero vector, where 1/sqrt(var + eps) is ~1000 and the
    # finite differences' truncation error swamps the check: give it a trained model's spread
    params["cls_token"] = rng.standard_normal(params["cls_token"].shape)
    x = rng.standard_normal((3, 1, 8, 8))
    colours = rng.integers(0, mpp_classes(cfg), (3, cfg.num_patches))
    plan = every_kind_plan(3, cfg.num_patches)
    _, dlogits, _, _, cache = mpp_loss(params, x, colours, cfg, plan, label_smoothing=0.1)
    grads = mpp_backward(dlogits, cache)
    assert list(grads) == list(params) and all(grads[k].shape == params[k].shape for k in params)
    loss = lambda: float(mpp_loss(params, x, colours, cfg, plan, label_smoothing=0.1)[0])
    check_grads(loss, params, grads, max_entries=40)


def test_loss_at_initialisation_is_ln_512():
    params = mv.init_params(MPP, seed=0, dtype="float64")          # the colour head starts at zero: uniform
    x = rng.standard_normal((4, 3, 8, 8))
    plan = corruption_plan(np.random.default_rng(0), 4, MPP.num_patches)
    loss = mpp_loss(params, x, rng.integers(0, 512, (4, MPP.num_patches)), MPP, plan)[0]
    assert abs(float(loss) - math.log(512)) < 1e-12


def test_shards_of_a_plan_give_the_full_batch_gradient():
    """The corruption is drawn once per batch: one thread or three give the same step."""
    params = mv.init_params(MPP, seed=0)
    params["mpp_head.w"] += 0.05
    x = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    colours = rng.integers(0, 512, (10, MPP.num_patches))
    l1, c1, g1 = Engine(MPP, 1).loss_and_grads(params, x, colours, 0.0, 0, 7)
    l2, c2, g2 = Engine(MPP, 3).loss_and_grads(params, x, colours, 0.0, 0, 7)
    assert abs(float(c1) - float(c2)) < 1e-9 and abs(float(l1) - float(l2)) < 1e-6
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_plan_rows_renumber_the_swaps():
    plan = every_kind_plan(4, 6)
    part = plan_rows(plan, slice(2, 4))
    assert isinstance(part, Corruption) and part.chosen.shape == (2, 3)
    want = [(b - 2, i) for b, i in zip(plan.swap_b, plan.swap_i) if b >= 2]
    assert list(zip(part.swap_b, part.swap_i)) == want


def test_a_pretraining_model_has_no_class_head():
    assert "head.w" not in mv.init_params(MPP) and "mask_token" in mv.init_params(MPP)
    with pytest.raises(ValueError, match="no class head.*finetune"):
        mv.forward(mv.init_params(MPP), np.zeros((1, 3, 8, 8), np.float32), MPP)
    with pytest.raises(mv.ConfigError, match="head must be one of"):
        mv.ViTConfig.preset("test", head="bert")


def colour_dataset(n_train=48, n_test=16, seed=0):
    """Each image one colour of a five-colour palette (its class), with a little noise per patch: a
    masked patch's colour is the colour of the patches around it."""
    r = np.random.default_rng(seed)
    palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [128, 128, 128]])

    def mk(n):
        y = r.integers(0, 5, n)
        patches = palette[y][:, :, None, None] + r.integers(-8, 9, (n, 3, 2, 2))           # (n, 3, 2, 2)
        return Split(np.repeat(np.repeat(patches, 4, 2), 4, 3).astype(np.uint8), y)
    return Dataset(mk(n_train), mk(n_test), tuple("abcde"), "colours")


def test_pretraining_learns_and_resumes_exactly(tmp_path):
    tcfg = TrainConfig(epochs=6, batch_size=16, lr=3e-2, warmup_epochs=1, seed=1, threads=2, label_smoothing=0.0,
                       augment=False)
    quiet = dict(progress=False, log=lambda *_: None)
    full = Trainer(MPP, tcfg, colour_dataset(), tmp_path / "full", **quiet)
    before = evaluate(full.params, MPP, full.data.test, full.mean, full.std)
    full.fit()
    assert abs(before["loss"] - math.log(512)) < 1e-5
    assert full.history[-1]["test_loss"] < before["loss"] - 2    # it learns the colours of the test images
    assert (tmp_path / "full" / "curves.png").exists() and not (tmp_path / "full" / "confusion.png").exists()
    part = Trainer(MPP, tcfg, colour_dataset(), tmp_path / "part", **quiet)
    original = part.engine.loss_and_grads

    def interrupt_at_step_7(params, x, y, ls, seed, step, **kw):
        if step == 7:  # mid-epoch (3 steps an epoch), as Ctrl-C would
            os.kill(os.getpid(), signal.SIGINT)
        return original(params, x, y, ls, seed, step, **kw)
    part.engine.loss_and_grads = interrupt_at_step_7
    part.fit()
    assert part.interrupted == "Ctrl-C" and part.step == 8
    resumed = Trainer(MPP, tcfg, colour_dataset(), tmp_path / "part", resume=True, **quiet)
    resumed.fit()
    for k in full.params:
        np.testing.assert_array_equal(resumed.params[k], full.params[k], err_msg=k)


def run_cli(*args, cache):
    return subprocess.run([sys.executable, "-m", "minivit", *args], capture_output=True, text=True,
                          env={**os.environ, "MINIVIT_CACHE": str(cache)})


def test_cli_pretrain_then_finetune_and_fewshot(tmp_path):
    from datagen import png_bytes, write_folder
    d = colour_dataset()
    files = {f"toy/{name}/{d.classes[y]}/{i:03d}.png": png_bytes(im.transpose(1, 2, 0))
             for name, split in (("train", d.train), ("test", d.test)) for i, (im, y) in enumerate(zip(split.images, split.labels))}
    data = write_folder(tmp_path / "data", files)
    r = run_cli("pretrain", "--data", str(data), "--preset", "test", "--epochs", "2", "--batch-size", "16",
                "--out", str(tmp_path / "pre"), cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "colour accuracy" in r.stdout
    params, cfg, _, meta = load_checkpoint(tmp_path / "pre" / "checkpoint.npz")
    assert cfg.head == "mpp" and "mask_token" in params and len(meta["history"]) == 2
    r = run_cli("fewshot", str(tmp_path / "pre" / "checkpoint.npz"), "--shots", "1", "--draws", "2", "--pool", "gap",
                "--json", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["fewshot"]) == {"1"} and out["pool"] == "gap"
    r = run_cli("finetune", str(tmp_path / "pre" / "checkpoint.npz"), "--data", str(data), "--epochs", "1",
                "--batch-size", "16", "--out", str(tmp_path / "ft"), cache=tmp_path)
    assert r.returncode == 0, r.stderr
    params, cfg, _, _ = load_checkpoint(tmp_path / "ft" / "checkpoint.npz")
    assert cfg.head == "classify" and "mask_token" not in params and params["head.w"].shape == (cfg.dim, 5)
    pre = load_checkpoint(tmp_path / "pre" / "checkpoint.npz")[0]
    assert not np.array_equal(params["blocks.0.attn.qkv.w"], pre["blocks.0.attn.qkv.w"])  # it trained on from there
    r = run_cli("evaluate", str(tmp_path / "pre" / "checkpoint.npz"), "--data", str(data), cache=tmp_path)
    assert r.returncode == 1 and "no class head" in r.stderr


def test_cli_pretrain_refuses_class_head_flags(capsys):
    """pretrain has no class head, so --num-classes (and label mixing) is an error, not silently ignored."""
    from minivit.cli.commands import main
    assert main(["pretrain", "--preset", "test", "--num-classes", "5", "--epochs", "1"]) != 0
    assert "--num-classes sets the class head" in capsys.readouterr().err
    assert main(["pretrain", "--preset", "test", "--mixup", "0.8", "--epochs", "1"]) != 0
    assert "--mixup and --cutmix mix class labels" in capsys.readouterr().err

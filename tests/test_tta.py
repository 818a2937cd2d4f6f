"""Test-time augmentation (--tta flip, flip-shift): the views, their weights, and the evaluation that averages
their logits, in evaluate, predict and a training run's last readings."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minivit as mv
from minivit.config import TrainConfig
from minivit.data.transforms import normalize, tta_views
from minivit.models.vit import forward
from minivit.train.engine import evaluate
from helpers import toy_dataset


def _model(seed):
    """The test preset with a random head (a fresh one is zero, and its logits would not tell views apart)."""
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=seed)
    params["head.w"] = np.random.default_rng(seed).standard_normal(params["head.w"].shape).astype(np.float32)
    return cfg, params


def test_the_views_are_mirrors_and_one_pixel_shifts_with_weights_summing_to_one():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    assert [w for w, _ in tta_views(x, "")] == [1.0] and tta_views(x, "")[0][1] is x
    flip = tta_views(x, "flip")
    assert [w for w, _ in flip] == [0.5, 0.5]
    np.testing.assert_array_equal(flip[1][1], x[..., ::-1])
    views = tta_views(x, "flip-shift")
    assert len(views) == 6 and sum(w for w, _ in views) == 1.0
    down_right, up_left = views[2][1], views[4][1]
    np.testing.assert_array_equal(down_right[..., 1:, 1:], x[..., :-1, :-1])   # moved one pixel down and right
    np.testing.assert_array_equal(up_left[..., :-1, :-1], x[..., 1:, 1:])
    np.testing.assert_array_equal(down_right[..., 0, 1:], x[..., 1, :-1])     # the edge: reflected, not padded
    np.testing.assert_array_equal(views[3][1], down_right[..., ::-1])
    with pytest.raises(ValueError, match="flip or flip-shift"):
        tta_views(x, "rotate")


@pytest.mark.parametrize("tta", ["flip", "flip-shift"])
def test_evaluate_averages_the_views_logits(tta):
    cfg, params = _model(3)
    data = toy_dataset(n_train=4, n_test=10)
    mean, std = np.full(3, 120.0), np.full(3, 60.0)
    ev = evaluate(params, cfg, data.test, mean, std, batch_size=4, threads=1, tta=tta)
    x = normalize(data.test.images, mean, std)
    logits = sum(w * forward(params, v, cfg, keep_cache=False)[0] for w, v in tta_views(x, tta))
    np.testing.assert_array_equal(ev["predictions"], logits.argmax(axis=1))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert ev["loss"] == pytest.approx(-log_p[np.arange(10), data.test.labels].mean(), rel=1e-5)
    plain = evaluate(params, cfg, data.test, mean, std, batch_size=4, threads=1)
    assert plain["loss"] != pytest.approx(ev["loss"], rel=1e-6)     # the views do change the logits


def test_a_mirror_symmetric_image_scores_the_same_with_flip():
    cfg, params = _model(1)
    data = toy_dataset(n_train=4, n_test=6)
    data.test.images[...] = np.concatenate([data.test.images[..., :4], data.test.images[..., :4][..., ::-1]], axis=-1)
    mean, std = np.full(3, 120.0), np.full(3, 60.0)
    a = evaluate(params, cfg, data.test, mean, std, threads=1)
    b = evaluate(params, cfg, data.test, mean, std, threads=1, tta="flip")
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    data.test.images[..., 0] += 1       # no longer symmetric: the mirror now differs
    c = evaluate(params, cfg, data.test, mean, std, threads=1, tta="flip")
    assert c["loss"] != pytest.approx(evaluate(params, cfg, data.test, mean, std, threads=1)["loss"], rel=1e-6)


def test_the_commands_take_tta_and_a_run_records_it(tmp_path):
    from datagen import image_folder_files, png_bytes, write_folder
    from minivit.io.checkpoint import load_checkpoint
    env = {**os.environ, "MINIVIT_CACHE": str(tmp_path / "cache")}
    data = write_folder(tmp_path / "data", image_folder_files(classes=tuple("abcde"), size=8, per_class=(6, 2)))
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "minivit"]
    train = cli + ["train", "--data", str(data), "--preset", "test", "--batch-size", "8", "--no-progress", "--out",
                   str(out), "--tta", "flip", "--epochs", "1"]
    assert subprocess.run(train, capture_output=True, text=True, env=env, timeout=300).returncode == 0
    assert load_checkpoint(out / "checkpoint.npz")[3]["train_config"]["tta"] == "flip"
    r = subprocess.run(train[:-4] + ["--tta", "flip-shift", "--epochs", "2", "--resume"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr                 # another test-time augmentation changes no weight
    r = subprocess.run(cli + ["evaluate", str(out / "checkpoint.npz"), "--tta", "flip-shift", "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and json.loads(r.stdout)["tta"] == "flip-shift", r.stderr
    image = tmp_path / "one.png"
    image.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    r = subprocess.run(cli + ["predict", str(out / "checkpoint.npz"), str(image), "--tta", "flip"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith(str(image)), r.stderr
    with pytest.raises(ValueError, match="--tta must be one of"):
        TrainConfig(tta="rotate")


def test_a_run_scores_only_its_last_readings_with_tta_beside_the_plain_ones(tmp_path):
    """--tta in train: every epoch's validation reading stays plain; the last epoch adds val_tta_* and the test
    reading test_tta_*, each what `evaluate --tta` computes from the checkpoint (the test set), or, for the
    validation images, the views' loss differs from the plain one."""
    from datagen import image_folder_files, write_folder
    env = {**os.environ, "MINIVIT_CACHE": str(tmp_path / "cache")}
    data = write_folder(tmp_path / "data", image_folder_files(classes=tuple("abcd"), size=8, per_class=(8, 3)))
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "minivit"]
    r = subprocess.run(cli + ["train", "--data", str(data), "--preset", "test", "--batch-size", "8", "--no-progress",
                              "--out", str(out), "--tta", "flip-shift", "--epochs", "2", "--val-split", "8"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "val_tta_acc" not in rows[0] and "test_acc" not in rows[0]
    last = rows[-1]
    assert {"val_acc", "val_tta_acc", "val_tta_loss", "test_acc", "test_tta_acc", "test_tta_loss"} <= set(last)
    assert last["val_tta_loss"] != pytest.approx(last["val_loss"], rel=1e-6)
    assert "--tta flip-shift" in r.stdout + r.stderr
    for tta, key in (("flip-shift", "test_tta"), ("", "test")):
        ev = subprocess.run(cli + ["evaluate", str(out / "checkpoint.npz"), "--json"] + (["--tta", tta] if tta else []),
                            capture_output=True, text=True, env=env, timeout=300)
        assert ev.returncode == 0, ev.stderr
        result = json.loads(ev.stdout)
        assert result["accuracy"] == pytest.approx(last[f"{key}_acc"], abs=1e-5)
        assert result["loss"] == pytest.approx(last[f"{key}_loss"], rel=1e-4)

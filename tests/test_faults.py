"""Fault injection: what an adversarial user does to a run, and what minivit must survive.

Two runs on one folder, kill -9 at random moments then --resume, a full disk (RLIMIT_FSIZE in a
child process), changed data on resume, classes matched by name, 16-bit, oversized and
metadata-littered images, and the smaller edges of the command line.
"""
import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest

import minivit as mv
from minivit.data import DataError, load_dataset, read_image
from minivit.io.run_folder import RunFolderBusy, RunLock, new_run_folder
from datagen import image_folder_files, png_bytes, write_folder, write_zip
from helpers import needs

TRAIN = ["--preset", "test", "--batch-size", "8", "--no-progress"]


def run(*args, preexec_fn=None, **kw):
    return subprocess.run([sys.executable, "-m", "minivit", *args], capture_output=True, text=True,
                          preexec_fn=preexec_fn, **kw)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    return write_folder(tmp_path / "data", image_folder_files(classes=tuple("abcde"), size=8, per_class=(6, 2)))


def epochs_of(out):
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- 1. two runs, one folder

def test_second_run_on_a_busy_folder_is_refused_naming_the_holder(tmp_path, toy):
    out = tmp_path / "run"
    with RunLock(out):  # this process is "the first run"
        r = run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN)
    assert r.returncode == 1, r.stderr
    assert f"in use by another training run (PID {os.getpid()})" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "checkpoint.npz").exists()


def test_a_run_still_loading_its_data_holds_the_folder(tmp_path, toy):
    """The lock is taken before the data loads and held to the end: a second run started while the first
    is still reading its data is refused, and the first then trains and writes its own checkpoint."""
    out = tmp_path / "run"
    slow = ("import sys, time; import minivit.data.datasets as d; load = d.load_dataset; "
            "d.load_dataset = lambda *a, **k: (print('loading', flush=True), time.sleep(3), load(*a, **k))[2]; "
            "from minivit.cli import main; sys.exit(main(sys.argv[1:]))")
    first = subprocess.Popen([sys.executable, "-c", slow, "train", "--data", str(toy), "--out", str(out), "--epochs", "1",
                              *TRAIN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "loading"
    second = run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN)
    assert second.returncode == 1 and f"in use by another training run (PID {first.pid})" in second.stderr, second.stderr
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert (out / "checkpoint.npz").exists() and "done:" in stdout


def test_lock_of_a_killed_run_is_not_stale(tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from minivit.io.run_folder import RunLock; "
                              f"RunLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderBusy, match=f"PID {child.pid}"):
        RunLock(out).acquire()
    child.kill()
    child.wait()
    with RunLock(out):  # taken over at once: the kernel dropped the dead process's lock
        assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")
    folders = [new_run_folder() for _ in range(3)]
    assert [f.name for f in folders] == ["20260101-000000", "20260101-000000-2", "20260101-000000-3"]


# ---------------------------------------------------------------- 2. changed data on resume

def test_resume_with_other_data_is_refused(tmp_path, toy):
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN).returncode == 0
    other = write_folder(tmp_path / "other", image_folder_files(classes=tuple("abcde"), size=8, per_class=(6, 2), seed=9))
    r = run("train", "--data", str(other), "--out", str(out), "--epochs", "2", "--resume", *TRAIN)
    assert r.returncode == 1 and "trained on other data" in r.stderr, r.stderr
    assert epochs_of(out) == [1]


def test_a_finished_run_can_be_extended(tmp_path, toy):
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN).returncode == 0
    r = run("train", "--data", str(toy), "--out", str(out), "--epochs", "2", "--resume", *TRAIN)
    assert r.returncode == 0, r.stderr
    assert "training to 2 epochs instead of 1" in r.stdout and epochs_of(out) == [1, 2]


# ---------------------------------------------------------------- 4. kill -9 at random moments

def test_kill_9_at_random_moments_then_resume(tmp_path, toy):
    """Whatever the moment of death, the checkpoint loads and the metrics list each epoch once."""
    out = tmp_path / "run"
    args = ["train", "--data", str(toy), "--out", str(out), "--epochs", "6", *TRAIN]
    rng = np.random.default_rng(0)
    for attempt in range(4):
        p = subprocess.Popen([sys.executable, "-m", "minivit", *args, *(["--resume"] if attempt else [])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(2.0, 5.0)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if (out / "checkpoint.npz").exists():
            _, _, _, meta = mv.load_checkpoint(out / "checkpoint.npz")
            assert [h["epoch"] for h in meta["history"]] == epochs_of(out)
        assert not list(out.glob("*.tmp"))
    r = run(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert epochs_of(out) == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- 5. disk errors

def test_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, toy):
    """A file-size limit in the child (as a full disk would) makes the checkpoint write fail."""
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--out", str(tmp_path / "warm"), "--epochs", "1", *TRAIN).returncode == 0
    limit = 200_000  # above the decoded-data cache and the small files, below the ~1 MB checkpoint
    r = run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN, "--dim", "64", "--mlp-dim", "256",
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "could not write checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert not list(out.glob("*.tmp")) and not (out / "checkpoint.npz").exists()
    assert not (out / "metrics.jsonl").exists()  # no record of an epoch the checkpoint lacks


def test_out_that_is_a_file_fails_before_loading_data(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = run("train", "--data", str(tmp_path / "no-such-data"), "--out", str(f), *TRAIN)
    assert r.returncode == 1 and "is a file, not a folder" in r.stderr  # not the data error that comes later


def test_bad_confusion_path_fails_first(tmp_path, toy):
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN).returncode == 0
    r = run("evaluate", str(out / "checkpoint.npz"), "--confusion", str(tmp_path / "missing" / "cm.png"))
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- 3. and 7. classes

def test_evaluate_matches_classes_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    files = image_folder_files(classes=("airplane", "ship", "truck"), size=8, per_class=(6, 3))
    data3 = write_folder(tmp_path / "three", files)
    out = tmp_path / "run"
    r = run("train", "--data", str(data3), "--out", str(out), "--epochs", "1", *TRAIN)
    assert r.returncode == 0, r.stderr  # 3 classes with the 5-class 'test' preset: num_classes follows the data
    assert mv.load_checkpoint(out / "checkpoint.npz")[1].num_classes == 3
    full = json.loads(run("evaluate", str(out / "checkpoint.npz"), "--json").stdout)
    two = write_folder(tmp_path / "two", {k: v for k, v in files.items() if "/airplane/" not in k})
    part = json.loads(run("evaluate", str(out / "checkpoint.npz"), "--data", str(two), "--json").stdout)
    assert sorted(part["per_class"]) == ["ship", "truck"]  # scored as ship and truck, not as classes 0 and 1
    assert part["per_class"] == {c: full["per_class"][c] for c in ("ship", "truck")}
    odd = write_folder(tmp_path / "odd", image_folder_files(classes=("cat", "ship"), size=8, per_class=(2, 2)))
    r = run("evaluate", str(out / "checkpoint.npz"), "--data", str(odd))
    assert r.returncode == 1 and "not trained on: cat" in r.stderr


# ---------------------------------------------------------------- 6. images

def test_16_bit_png_is_scaled_not_white(tmp_path):
    from PIL import Image
    v = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(v).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit image
    img = read_image(str(path))
    assert img.shape == (3, 2, 2) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0], [[0, 64], [128, 255]])


def _png_claiming(width, height):
    """A small valid PNG whose header claims another size: enough to test a check made before decoding."""
    data = bytearray(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def test_oversized_image_is_refused_before_decoding(tmp_path):
    with pytest.raises(DataError, match="huge.png: image has more pixels than minivit reads"):
        read_image(_png_claiming(20000, 20000), where="huge.png")  # Pillow itself stops this one at open()
    with pytest.raises(DataError, match="12000x12000 pixels, more than minivit reads"):
        read_image(_png_claiming(12000, 12000), where="big.png")    # Pillow would decode 432 MB of it


def test_macos_metadata_entries_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    files = image_folder_files()
    files["__MACOSX/toy/train/cat/._000.png"] = b"\x00\x05\x16\x07 resource fork"
    files["toy/train/cat/._001.png"] = b"\x00\x05\x16\x07 resource fork"
    d = load_dataset(str(write_zip(tmp_path / "toy.zip", files)))
    assert len(d.train.labels) == 8 and d.classes == ("cat", "dog")


def test_truncated_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    src = write_folder(tmp_path / "data", image_folder_files())
    first = load_dataset(str(src))
    (cache,) = (tmp_path / "cache").glob("imagefolder-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])  # a killed writer, a full disk
    again = load_dataset(str(src))
    np.testing.assert_array_equal(again.train.images, first.train.images)


# ---------------------------------------------------------------- 9. smaller edges

def test_sigterm_exits_143_and_resumes(tmp_path, toy):
    out = tmp_path / "run"
    args = ["train", "--data", str(toy), "--out", str(out), "--epochs", "40", *TRAIN]
    p = subprocess.Popen([sys.executable, "-m", "minivit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:  # wait until training has begun
        if "parameters;" in line:
            break
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert mv.load_checkpoint(out / "checkpoint.npz")[3]["step"] > 0


def test_top_k_zero_is_refused(tmp_path, toy):
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN).returncode == 0
    img = next(toy.glob("test/a/*.png"))
    r = run("predict", str(out / "checkpoint.npz"), str(img), "--top-k", "0")
    assert r.returncode == 1 and "--top-k must be at least 1" in r.stderr


def test_nan_guard_says_when_no_checkpoint_exists(tmp_path):
    from minivit.data import Dataset, Split
    from minivit.train import TrainConfig, Trainer, TrainingDiverged
    rng = np.random.default_rng(0)
    mk = lambda n: Split(rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), rng.integers(0, 5, n))
    trainer = Trainer(mv.ViTConfig.preset("test"), TrainConfig(epochs=1, batch_size=4, lr=1e30, warmup_epochs=0,
                                                                 clip_norm=0, threads=1),
                      Dataset(mk(16), mk(4), tuple("abcde"), "toy"), tmp_path / "run", progress=False, log=lambda *_: None)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been saved yet"):
        trainer.fit()


# ---------------------------------------------------------------- 8. malformed checkpoints

def _good_checkpoint(path):
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=0)
    opt = mv.AdamW()
    opt.step(params, {k: np.ones_like(v) for k, v in params.items()})
    meta = {"step": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "classes": list("abcde"),
            "train_config": {"epochs": 1, "batch_size": 4}}
    return mv.save_checkpoint(path, params, cfg, opt.state_dict(), meta), params, opt, meta


def _rewrite(path, change):
    """Load the .npz as plain arrays, let `change` edit them, write them back (no minivit code involved)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    change(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("change,message", [
    (lambda a, m: a.update({"param/head.w": a["param/head.w"].astype(np.int32)}), "'head.w' has dtype int32"),
    (lambda a, m: a.update({"param/norm.w": a["param/norm.w"] > 0}), "'norm.w' has dtype bool"),
    (lambda a, m: a["param/cls_token"].fill(np.nan), "'cls_token' holds NaN"),
    (lambda a, m: a.update({"opt/m.head.w": np.zeros((2, 2), np.float32)}), "optimiser state 'm.head.w' does not fit"),
    (lambda a, m: m.update({"mean": "0.5"}), "'mean' must be a list of 3 numbers"),
    (lambda a, m: m.pop("std"), "missing 'std'"),
    (lambda a, m: m.update({"step": "7"}), "'step' must be a whole number"),
    (lambda a, m: m.update({"classes": ["a"]}), "'classes' must be a list of 5 names"),
    (lambda a, m: m.update({"train_config": {"epochs": 0}}), "'train_config' is not a training configuration"),
])
def test_malformed_checkpoint_is_one_clear_error(tmp_path, change, message):
    path, *_ = _good_checkpoint(tmp_path / "c.npz")
    mv.load_checkpoint(path, require=("mean", "std"))  # well-formed before the change
    _rewrite(path, change)
    with pytest.raises(mv.io.checkpoint.CheckpointError, match="invalid checkpoint: .*" + message.replace("(", r"\(")):
        mv.load_checkpoint(path, require=("mean", "std"))


def test_evaluate_refuses_nan_parameters_instead_of_printing_nan(tmp_path, toy):
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN).returncode == 0
    _rewrite(out / "checkpoint.npz", lambda a, m: a["param/head.b"].fill(np.nan))
    r = run("evaluate", str(out / "checkpoint.npz"))
    assert r.returncode == 1 and "holds NaN" in r.stderr and "NaN" not in r.stdout


# ---------------------------------------------------------------- fine-tuning (paper 3.2)

def test_finetune_a_checkpoint_on_new_classes_at_a_new_resolution(tmp_path, toy):
    pre = tmp_path / "pre"  # seed 5: a fine-tune that re-initialised (seed 0) would start far from these weights
    assert run("train", "--data", str(toy), "--out", str(pre), "--epochs", "1", "--seed", "5", *TRAIN).returncode == 0
    new = write_folder(tmp_path / "new", image_folder_files(classes=("x", "y", "z"), size=16, per_class=(8, 2)))
    out = tmp_path / "ft"
    r = run("finetune", str(pre / "checkpoint.npz"), "--data", str(new), "--out", str(out), "--epochs", "2",
            "--batch-size", "8", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resized (bilinear) from 8x8 to 16x16: 16 patches" in r.stdout
    params, cfg, opt, meta = mv.load_checkpoint(out / "checkpoint.npz")
    assert (cfg.num_classes, cfg.image_size) == (3, 16) and meta["classes"] == ["x", "y", "z"]
    assert meta["train_config"]["optimizer"] == "sgd" and meta["train_config"]["weight_decay"] == 0.0
    assert any(k.startswith("u.") for k in opt)          # SGD momentum buffers, not AdamW moments
    pre_params = mv.load_checkpoint(pre / "checkpoint.npz")[0]
    # the body started from the pre-trained weights: after two short epochs it is still close to them
    assert np.abs(params["blocks.0.mlp.fc1.w"] - pre_params["blocks.0.mlp.fc1.w"]).max() < 0.5
    assert epochs_of(out) == [1, 2]


def test_finetune_an_official_npz(tmp_path, toy):
    from minivit.io.jax_npz import save_jax_npz
    cfg = mv.ViTConfig.preset("test", num_classes=7)
    save_jax_npz(tmp_path / "official.npz", mv.init_params(cfg, seed=1), cfg)
    r = run("finetune", str(tmp_path / "official.npz"), "--data", str(toy), "--out", str(tmp_path / "ft"),
            "--epochs", "1", "--batch-size", "8", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert mv.load_checkpoint(tmp_path / "ft" / "checkpoint.npz")[1].num_classes == 5


def test_finetune_at_a_higher_resolution_than_the_data(tmp_path, toy):
    pre = tmp_path / "pre"
    assert run("train", "--data", str(toy), "--out", str(pre), "--epochs", "1", *TRAIN).returncode == 0
    r = run("finetune", str(pre / "checkpoint.npz"), "--data", str(toy), "--image-size", "16", "--out",
            str(tmp_path / "ft"), "--epochs", "1", "--batch-size", "8", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resizing the data's 8x8 images to 16x16" in r.stdout and "from 8x8 to 16x16" in r.stdout
    assert mv.load_checkpoint(tmp_path / "ft" / "checkpoint.npz")[1].image_size == 16


def test_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    from minivit.atomic_files import atomic_write, write_text_atomic
    path = tmp_path / "f.txt"
    write_text_atomic(path, "old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path) as f:
            f.write(b"half")
            raise OSError("disk full")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    write_text_atomic(path, "new")
    assert path.read_text() == "new"


# ---------------------------------------------------------------- round two: what the second adversarial pass found

def test_a_blow_up_on_an_epochs_last_step_is_never_saved(tmp_path, monkeypatch):
    """One step per epoch (60 images, batch 60): the loss is finite before the update that breaks the
    weights, so only a check of the weights keeps them out of the checkpoint."""
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    data = write_folder(tmp_path / "data", image_folder_files(classes=tuple("abcde"), size=8, per_class=(12, 2)))
    for epochs in ("1", "2"):
        out = tmp_path / f"run{epochs}"
        r = run("train", "--data", str(data), "--out", str(out), "--epochs", epochs, "--lr", "1e38",
                "--preset", "test", "--batch-size", "60", "--no-progress")
        assert r.returncode == 1 and "done" not in r.stdout, r.stdout
        assert "parameters became NaN or infinite at step 1" in r.stderr and "no checkpoint had been saved" in r.stderr
        assert not (out / "checkpoint.npz").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("flags,message", [
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--warmup", "nan"], "--warmup must be a finite number >= 0, got nan"),
    (["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    (["--label-smoothing", "1"], "--label-smoothing must be a finite number in [0, 1), got 1.0"),
])
def test_numeric_flags_are_checked_before_any_data_loads(tmp_path, flags, message):
    r = run("train", "--data", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"), *TRAIN, *flags)
    assert r.returncode == 1 and message in r.stderr and "no such file" not in r.stderr, r.stderr


def test_metrics_hold_json_null_for_a_non_finite_figure_and_plots_skip_it(tmp_path):
    from minivit.train.plots import plot_curves
    history = [{"epoch": 1, "train_loss": 2.0, "test_loss": None, "train_acc": 0.1, "test_acc": 0.2},
               {"epoch": 2, "train_loss": 1.5, "test_loss": 1.4, "train_acc": 0.3, "test_acc": 0.4}]
    plot_curves(history, tmp_path / "c.png", train_loss_label="train (label-smoothed)")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_make_subset_never_writes_into_the_package(tmp_path):
    from minivit.data import SUBSET_PATH
    src = write_zip(tmp_path / "src.zip", image_folder_files(classes=("cat", "dog"), size=8, per_class=(3, 1)))
    before = SUBSET_PATH.read_bytes()
    r = subprocess.run([sys.executable, "-m", "minivit", "make-subset", str(src), "--train-per-class", "2",
                        "--test-per-class", "1"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cifar10-subset.tar.gz").is_file() and SUBSET_PATH.read_bytes() == before
    r = run("make-subset", str(src), "--dest", str(SUBSET_PATH))
    assert r.returncode == 1 and "inside the installed minivit package" in r.stderr
    assert SUBSET_PATH.read_bytes() == before
    r = run("make-subset", str(src), "--dest", str(tmp_path / "s.tar.gz"), "--train-per-class", "-1")
    assert r.returncode == 1 and "at least one image per class" in r.stderr


def test_finetune_at_a_size_that_cannot_fit_is_refused_with_the_figures(tmp_path, toy):
    pre = tmp_path / "pre"
    assert run("train", "--data", str(toy), "--out", str(pre), "--epochs", "1", *TRAIN).returncode == 0
    t0 = time.perf_counter()
    r = run("finetune", str(pre / "checkpoint.npz"), "--data", str(toy), "--image-size", "4096",
            "--out", str(tmp_path / "ft"), "--no-progress")
    assert r.returncode == 1 and "fine-tuning at --image-size 4096 would need about" in r.stderr, r.stderr
    assert "GB available" in r.stderr and "Traceback" not in r.stderr
    assert time.perf_counter() - t0 < 60                       # refused before any resizing
    for size in ("0", "-8"):
        r = run("finetune", str(pre / "checkpoint.npz"), "--data", str(toy), "--image-size", size)
        assert r.returncode == 1 and "--image-size must be a positive number of pixels" in r.stderr


def test_a_corrupt_zip_member_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    files = image_folder_files(classes=("cat", "dog"), size=8, per_class=(3, 1))
    path = tmp_path / "toy.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for rel, data in files.items():
            z.writestr(rel, data)
    raw = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("toy/train/cat/001.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 5:start + 25] = bytes(20)                       # damage the deflated data of one member
    path.write_bytes(bytes(raw))
    r = run("train", "--data", str(path), "--out", str(tmp_path / "run"), *TRAIN)
    assert r.returncode == 1 and "corrupted archive member toy/train/cat/001.png" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("head", ["classify", "mpp"])
def test_a_constant_colour_channel_trains_with_finite_losses(tmp_path, head):
    from minivit.data import Dataset, Split, channel_stats
    from minivit.train import TrainConfig, Trainer
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
        x[:, 2] = 0                                             # a zeroed blue channel
        return Split(x, rng.integers(0, 5, n))
    data = Dataset(split(16), split(4), tuple("abcde"), "no-blue")
    assert channel_stats(data.train.images)[1][2] > 0         # floored, not 0
    cfg = mv.ViTConfig.preset("test", head=head)
    trainer = Trainer(cfg, TrainConfig(epochs=1, batch_size=8, threads=1, label_smoothing=0.0), data, tmp_path / "r",
                      progress=False, log=lambda *_: None, plots=False)
    history = trainer.fit()
    assert np.isfinite(history[-1]["train_loss"]) and np.isfinite(history[-1]["test_loss"])


def test_image_folders_follow_symlinked_classes_and_take_nested_images(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    files = image_folder_files(classes=("a", "b"), size=8, per_class=(2, 1))
    root = write_folder(tmp_path / "data", files)
    elsewhere = write_folder(tmp_path / "other", image_folder_files(classes=("c",), size=8, per_class=(2, 1), seed=1))
    (root / "train" / "c").symlink_to(elsewhere / "train" / "c", target_is_directory=True)   # a linked class
    (root / "test" / "c").symlink_to(elsewhere / "test" / "c", target_is_directory=True)
    nested = root / "train" / "a" / "more"
    nested.mkdir()
    (nested / "009.png").write_bytes(files["toy/train/a/000.png"])                          # an image one level deeper
    (nested / "loop").symlink_to(root, target_is_directory=True)                           # a link back up
    d = load_dataset(str(root))
    assert d.classes == ("a", "b", "c")
    assert np.bincount(d.train.labels).tolist() == [3, 2, 2]


def test_the_same_images_in_any_container_are_the_same_data(tmp_path, monkeypatch):
    """A folder, a .zip and a .tar.gz whose members are not in sorted order: one order, one fingerprint."""
    import tarfile
    from minivit.train.run_state import data_fingerprint
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    files = image_folder_files(classes=("cat", "dog", "emu"), size=8, per_class=(3, 1))
    folder = write_folder(tmp_path / "folder", files)
    zipped = write_zip(tmp_path / "toy.zip", files)
    tgz = tmp_path / "toy.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for rel in reversed(list(files)):                                  # the archive's own order is reversed
            info = tarfile.TarInfo(rel)
            info.size = len(files[rel])
            tar.addfile(info, io.BytesIO(files[rel]))
    sets = [load_dataset(str(p)) for p in (folder, zipped, tgz)]
    prints = {data_fingerprint(d) for d in sets}
    assert len(prints) == 1
    for d in sets[1:]:
        np.testing.assert_array_equal(d.train.images, sets[0].train.images)
        np.testing.assert_array_equal(d.test.labels, sets[0].test.labels)


def test_data_cifar10_takes_a_local_cifar10_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    files = {k.replace("toy/", "cifar10/", 1): v for k, v in image_folder_files(classes=tuple("abcde"), size=8,
                                                                                per_class=(4, 1)).items()}
    write_folder(tmp_path, files)
    r = subprocess.run([sys.executable, "-m", "minivit", "train", "--data", "cifar10", "--out", "run", "--epochs", "1",
                        *TRAIN], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "data: cifar10 (20 train, 5 test, 5 classes)" in r.stdout and "download" not in r.stderr


def test_the_cache_variable_is_named_when_it_cannot_be_used(tmp_path, toy, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    for value in (str(tmp_path / "a-file"), str(tmp_path / "a-file" / "below")):
        monkeypatch.setenv("MINIVIT_CACHE", value)
        r = run("train", "--data", str(toy), "--out", str(tmp_path / "run"), "--epochs", "1", *TRAIN)
        assert r.returncode == 1 and f"cannot use MINIVIT_CACHE={value}" in r.stderr, r.stderr
    monkeypatch.setenv("MINIVIT_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))                  # empty means unset: ~/.cache/minivit
    r = subprocess.run([sys.executable, "-m", "minivit", "train", "--data", str(toy), "--out", "run", "--epochs", "1",
                        *TRAIN], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "home" / ".cache" / "minivit").glob("imagefolder-*.npz"))
    assert not list(tmp_path.glob("imagefolder-*"))


def test_what_is_not_a_dataset_is_named_and_never_read(tmp_path, toy):
    img = next(toy.glob("test/a/*.png"))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, message in ((img, "a single image, not a dataset"), ("/dev/zero", "not a regular file or folder"),
                          (fifo, "not a regular file or folder")):
        r = run("train", "--data", str(path), "--out", str(tmp_path / "run"), *TRAIN, timeout=120)
        assert r.returncode == 1 and message in r.stderr, r.stderr


def test_a_zero_byte_image_is_named_without_python_object_reprs(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    files = image_folder_files(classes=("cat", "dog"), size=8, per_class=(2, 1))
    files["toy/train/cat/empty.png"] = b""
    with pytest.raises(DataError, match="empty.png: cannot read image \\(the file is empty\\)") as e:
        load_dataset(str(write_zip(tmp_path / "toy.zip", files)))
    assert "BytesIO" not in str(e.value) and "0x" not in str(e.value)


def test_fewshot_l2_nan_is_refused(tmp_path, toy):
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN).returncode == 0
    r = run("fewshot", str(out / "checkpoint.npz"), "--l2", "nan")
    assert r.returncode == 1 and "--l2 > 0" in r.stderr


def test_a_finished_run_is_tidy_and_evaluate_reads_as_a_table(tmp_path, toy):
    out = tmp_path / "run"
    r = run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN)
    assert r.returncode == 0, r.stderr
    assert "model: test;" in r.stdout and " ;" not in r.stdout             # the header has no stray space
    assert "confusion.png" in r.stdout.splitlines()[-1]                    # the last line names both plots
    assert not (out / ".lock").exists()                                    # the lock goes with the run
    folder = tmp_path / "plots"
    folder.mkdir()
    r = run("evaluate", str(out / "checkpoint.npz"), "--confusion", str(folder))
    assert r.returncode == 0, r.stderr
    assert (folder / "confusion.png").is_file() and not (tmp_path / "plots.png").exists()
    assert not r.stdout.lstrip().startswith("{") and "accuracy" in r.stdout.splitlines()[0]


def test_resume_without_out_is_refused(tmp_path, toy):
    r = subprocess.run([sys.executable, "-m", "minivit", "train", "--data", str(toy), "--resume", *TRAIN],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "--resume continues the run in --out" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_evaluate_elsewhere_says_to_pass_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "project", image_folder_files(classes=tuple("abcde"), size=8, per_class=(4, 1)))
    r = subprocess.run([sys.executable, "-m", "minivit", "train", "--data", "toy", "--out", "run", "--epochs", "1",
                        *TRAIN], capture_output=True, text=True, cwd=tmp_path / "project")
    assert r.returncode == 0, r.stderr
    r = run("evaluate", str(tmp_path / "project" / "run" / "checkpoint.npz"), cwd=tmp_path)
    assert r.returncode == 1 and "was trained on --data toy, which is not found from" in r.stderr
    assert "pass --data" in r.stderr


def test_sigterm_while_loading_leaves_no_empty_run_folder(tmp_path, monkeypatch):
    """SIGTERM before training starts: the run folder this command made is removed, exit 143."""
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    data = write_folder(tmp_path / "data", image_folder_files(classes=tuple("abcde"), size=8, per_class=(400, 40)))
    p = subprocess.Popen([sys.executable, "-m", "minivit", "train", "--data", str(data), *TRAIN],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 60
    while not list((tmp_path / "runs").glob("*")) and time.time() < deadline:  # the folder exists: loading began
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_killed_writers_temporary_is_removed_on_the_next_load(tmp_path, monkeypatch):
    from minivit.atomic_files import remove_stale_temporaries
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    src = write_folder(tmp_path / "data", image_folder_files())
    load_dataset(str(src))
    (cache,) = (tmp_path / "cache").glob("imagefolder-*.npz")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                          # a PID that no longer runs
    stale = cache.with_name(f"{cache.name}.{dead.pid}.tmp")
    live = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")           # this process's own: kept
    stale.write_bytes(b"half a file")
    live.write_bytes(b"being written")
    remove_stale_temporaries(cache)
    assert not stale.exists() and live.exists()


def test_broken_links_are_skipped_and_two_links_to_one_folder_both_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "data", image_folder_files(classes=("a",), size=8, per_class=(2, 1)))
    shared = write_folder(tmp_path / "shared", image_folder_files(classes=("s",), size=8, per_class=(2, 1), seed=3))
    for name in ("b", "c"):                                          # two classes, one real folder
        (root / "train" / name).symlink_to(shared / "train" / "s", target_is_directory=True)
        (root / "test" / name).symlink_to(shared / "test" / "s", target_is_directory=True)
    (root / "train" / "a" / "gone.png").symlink_to(tmp_path / "no-such-file.png")   # a broken link
    d = load_dataset(str(root))
    assert d.classes == ("a", "b", "c") and np.bincount(d.train.labels).tolist() == [2, 2, 2]


# ---------------------------------------------------------------- round three: hostile files, a bad flag

@pytest.mark.parametrize("budget", ["-1", "nan"])
def test_an_invalid_time_budget_leaves_no_run_folder(tmp_path, toy, budget):
    out = tmp_path / "new" / "run"
    r = run("train", "--data", str(toy), "--out", str(out), "--time-budget", budget, *TRAIN)
    assert r.returncode == 1 and "time" in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr
    assert not out.exists() and (tmp_path / "new").exists() is False


def test_a_run_that_fails_removes_the_folder_it_made_but_not_its_parent(tmp_path):
    parent = tmp_path / "mine"
    parent.mkdir()
    r = run("train", "--data", str(tmp_path / "missing"), "--out", str(parent / "run"), *TRAIN)
    assert r.returncode == 1 and not (parent / "run").exists() and parent.is_dir(), r.stderr


def test_a_weights_file_that_is_a_pipe_is_refused_at_once(tmp_path):
    from minivit.io.huggingface import save_hf
    cfg = mv.ViTConfig.preset("test")
    folder = save_hf(tmp_path / "hf", mv.init_params(cfg, seed=0), cfg)
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")               # a read would block for ever
    os.mkfifo(tmp_path / "w.safetensors")
    os.symlink(tmp_path / "w.safetensors", tmp_path / "link.safetensors")
    for target in (folder, tmp_path / "w.safetensors", tmp_path / "link.safetensors"):
        r = run("evaluate", str(target), timeout=60)
        assert r.returncode == 1 and "not a regular file" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("what", ["nan-weight", "zero-std", "nan-mean", "short-mean", "classes"])
def test_non_finite_weights_or_a_bad_normalisation_are_refused(tmp_path, what):
    from minivit import load_pretrained
    from minivit.io.safetensors_file import save_timm
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=0)
    mean, std, classes = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], [f"c{i}" for i in range(cfg.num_classes)]
    if what == "nan-weight":
        params["blocks.0.mlp.fc1.w"][0, 0] = np.nan
    std = [0.25, 0.0, 0.25] if what == "zero-std" else std
    mean = [np.nan, 0.5, 0.5] if what == "nan-mean" else [0.5, 0.5] if what == "short-mean" else mean
    classes = classes[:-1] if what == "classes" else classes
    path = save_timm(tmp_path / "m.safetensors", params, cfg, classes, mean, std)
    with pytest.raises(mv.io.checkpoint.CheckpointError, match="fc1.w|normalisation|class names"):
        load_pretrained(path, heads=cfg.heads)
    r = run("evaluate", str(path), timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "m.safetensors" in r.stderr, r.stderr


@pytest.fixture
def exported_source(tmp_path):
    from minivit.io.safetensors_file import save_timm
    cfg = mv.ViTConfig.preset("test")
    with_norm = save_timm(tmp_path / "with.safetensors", mv.init_params(cfg, seed=0), cfg,
                          [f"c{i}" for i in range(cfg.num_classes)], [0.5] * 3, [0.25] * 3)
    without = save_timm(tmp_path / "without.safetensors", mv.init_params(cfg, seed=1), cfg)
    return with_norm, without, cfg


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("npz", "m.npz"), ("timm", "m.safetensors"), ("hf", "hf")])
def test_export_refuses_an_existing_target_unless_forced(tmp_path, exported_source, fmt, name):
    if fmt == "onnx":
        needs("onnx", 'pip install -e ".[onnx]"')   # an extra
    src, _, cfg = exported_source
    out = tmp_path / name
    if fmt == "hf":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        out.write_bytes(b"mine")
    r = run("export", str(src), "--format", fmt, "--out", str(out), "--heads", str(cfg.heads))
    assert r.returncode == 1 and "exists" in r.stderr and "--force" in r.stderr, r.stderr
    assert (out / "keep.txt").read_text() == "mine" if fmt == "hf" else out.read_bytes() == b"mine"
    r = run("export", str(src), "--format", fmt, "--out", str(out), "--heads", str(cfg.heads), "--force")
    assert r.returncode == 0, r.stderr
    assert not (out / "keep.txt").exists() if fmt == "hf" else out.read_bytes() != b"mine"


def test_export_never_writes_into_a_run_folder(tmp_path, toy, exported_source):
    src, _, cfg = exported_source
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--out", str(out), "--epochs", "1", *TRAIN).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for fmt, target in (("hf", out), ("npz", out / "checkpoint.npz"), ("onnx", out / "model.onnx")):
        r = run("export", str(src), "--format", fmt, "--out", str(target), "--heads", str(cfg.heads), "--force")
        assert r.returncode == 1 and "run folder" in r.stderr, r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert run("train", "--data", str(toy), "--out", str(out), "--epochs", "2", "--resume", *TRAIN).returncode == 0


def test_an_hf_export_over_an_older_one_leaves_no_stale_file(tmp_path, exported_source):
    from minivit import load_pretrained
    with_norm, without, cfg = exported_source
    out = tmp_path / "hf"
    assert run("export", str(with_norm), "--format", "hf", "--out", str(out), "--heads", str(cfg.heads)).returncode == 0
    assert (out / "preprocessor_config.json").exists()
    r = run("export", str(without), "--format", "hf", "--out", str(out), "--heads", str(cfg.heads), "--force")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert "mean" not in load_pretrained(out)[2]                        # the new model's, not the old one's
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]   # no staging folder left


def test_non_finite_weights_in_an_official_npz_are_refused(tmp_path):
    from minivit import load_pretrained
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=0)
    params["head.w"][0, 0] = np.inf
    path = mv.save_jax_npz(tmp_path / "vit.npz", params, cfg)
    with pytest.raises(mv.io.checkpoint.CheckpointError, match="head/kernel.*NaN or infinite"):
        load_pretrained(path)


COMPILE_SPY = """
import sys
import json
from numba.core import event
import minivit.train.trainer as trainer
compiles, clock = {"before": [], "after": []}, []
start = trainer._EpochMeter.__init__
def started(self, *a, **k):
    clock.append(1)
    start(self, *a, **k)
trainer._EpochMeter.__init__ = started
class Spy(event.Listener):
    def on_start(self, ev):
        compiles["after" if clock else "before"].append(ev.data["dispatcher"].py_func.__name__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Spy())
from minivit.cli.commands import main
code = main(sys.argv[1:])
print("numba compiles:", json.dumps(compiles))
sys.exit(code)
"""


def test_the_kernels_compile_before_the_training_clock_starts(tmp_path, toy):
    """With a cold numba cache, every kernel a step and an evaluation call compiles in the warm-up, before the
    first epoch's clock starts: a --time-budget run spends its budget training (numba's compile events, seen
    by a listener in the training process)."""
    needs("numba", "pip install minivit[fast]")
    r = subprocess.run([sys.executable, "-c", COMPILE_SPY, "train", "--data", str(toy), "--out", str(tmp_path / "run"),
                        "--epochs", "2", "--ema", "0.9", "--clip-norm", "1", *TRAIN], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")})
    assert r.returncode == 0, r.stderr
    compiled = json.loads(r.stdout.split("numba compiles: ", 1)[1])
    assert len(compiled["before"]) >= 5 and compiled["after"] == [], compiled


def test_without_a_writable_numba_cache_the_kernels_compile_in_memory(tmp_path, toy):
    """numba looks for a writable cache folder when the kernels are defined and raises when it finds none (a
    read-only install and home). Here numba is told to look in one place only (its own
    NUMBA_CACHE_LOCATOR_CLASSES), NUMBA_CACHE_DIR, which cannot be made (it is under a file): training runs,
    says so once, and writes no cache."""
    numba = needs("numba", "pip install minivit[fast]")
    if not hasattr(numba.core.config, "CACHE_LOCATOR_CLASSES"):   # numba's own switch, from numba 0.62
        pytest.skip("this numba cannot be told where to look for its cache (NUMBA_CACHE_LOCATOR_CLASSES, numba >= 0.62)")
    (tmp_path / "a-file").write_text("")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "a-file" / "numba"),
           "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator"}
    r = run("train", "--data", str(toy), "--out", str(tmp_path / "run"), "--epochs", "1", *TRAIN, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("numba finds no writable folder for its cache") == 1, r.stderr
    assert "Traceback" not in r.stderr and "done:" in r.stdout


@pytest.mark.parametrize("tta", ["", "flip"])
def test_an_epoch_whose_readings_overflow_is_logged_and_recorded_as_null(tmp_path, tta):
    """A non-finite validation or test loss (recorded as JSON null) must not break the epoch's log line, with or
    without the last readings' --tta figures beside it."""
    import minivit as mv
    from minivit.train import Trainer, TrainConfig
    from helpers import toy_dataset
    lines = []
    trainer = Trainer(mv.ViTConfig.preset("test"), TrainConfig(epochs=1, batch_size=8, val_split=5, tta=tta),
                      toy_dataset(), tmp_path / "run", progress=False, log=lines.append, plots=False)
    evaluate = trainer._evaluate
    trainer._evaluate = lambda *a: {**evaluate(*a), "loss": float("inf")}
    last = trainer.fit()[-1]
    assert last["val_loss"] is None and last["test_loss"] is None
    assert (last.get("test_tta_loss", None) is None) and (("test_tta_acc" in last) == bool(tta))
    assert any("val loss inf" in line and "test loss inf" in line for line in lines), lines
    saved = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert saved[-1]["test_loss"] is None

"""End-to-end: the command line as a user runs it, on a tiny image folder."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from datagen import image_folder_files, png_bytes, write_folder


def run(*args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "minivit", *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """8x8 images in 5 classes (the 'test' preset's size), and a private cache."""
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    files = image_folder_files(classes=("a", "b", "c", "d", "e"), size=8, per_class=(6, 2))
    return write_folder(tmp_path / "data", files)


def test_train_evaluate_predict(tmp_path, toy):
    out = tmp_path / "run"
    r = run("train", "--data", str(toy), "--preset", "test", "--epochs", "2", "--batch-size", "8",
            "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "done: test accuracy" in r.stdout
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for f in ("checkpoint.npz", "curves.png", "confusion.png", "command.txt"):
        assert (out / f).exists(), f
    machine = json.loads((out / "config.json").read_text())["machine"]     # what the run's figures ran on
    assert machine["numpy"] == np.__version__ and machine["cores"] >= 1 and machine["cpu"]

    r = run("evaluate", str(out / "checkpoint.npz"), "--confusion", str(tmp_path / "cm.png"), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["images"] == 10 and abs(result["accuracy"] - rows[-1]["test_acc"]) < 1e-9
    assert (tmp_path / "cm.png").exists()

    img = tmp_path / "x.png"
    img.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    r = run("predict", str(out / "checkpoint.npz"), str(img), "--top-k", "2")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith(str(img)) and len(line.split(",")) == 2
    probs = [float(part.split()[-1]) for part in line.split(":", 1)[1].split(",")]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)


def test_existing_run_is_not_overwritten_and_resume_continues(tmp_path, toy):
    out = tmp_path / "run"
    base = ["train", "--data", str(toy), "--preset", "test", "--batch-size", "8", "--out", str(out), "--no-progress"]
    assert run(*base, "--epochs", "1").returncode == 0
    before = (out / "checkpoint.npz").read_bytes()
    r = run(*base, "--epochs", "1")
    assert r.returncode == 1 and "already holds a checkpoint; pass --resume" in r.stderr
    assert (out / "checkpoint.npz").read_bytes() == before
    r = run(*base, "--epochs", "1", "--resume", "--preset", "test", "--dim", "16")
    assert r.returncode == 1 and "different model" in r.stderr and "dim" in r.stderr
    assert (out / "checkpoint.npz").read_bytes() == before


@pytest.mark.parametrize("args,msg", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--preset", "vit-z"], "unknown preset"),
    (["train", "--data", "/nonexistent"], "no such file or folder"),
    (["train", "--preset", "test", "--heads", "3"], "dim 8 is not divisible by heads 3"),
    (["train", "--backend", "cupy"], "cupy"),
    (["evaluate", "/nonexistent.npz"], "no such checkpoint"),
])
def test_bad_input_is_one_clear_line(args, msg, toy):
    if args[:2] == ["train", "--backend"]:
        try:
            import cupy  # noqa: F401
            pytest.skip("CuPy is installed here")
        except ImportError:
            pass
    r = run(*args)
    assert r.returncode != 0
    assert msg in r.stderr
    assert "Traceback" not in r.stderr


def test_wrong_image_size_for_the_model(tmp_path, toy):
    r = run("train", "--data", str(toy), "--preset", "cifar-tiny", "--out", str(tmp_path / "r"))
    assert r.returncode == 1
    assert "images are 3x8x8" in r.stderr and "expects 3x32x32" in r.stderr and "Traceback" not in r.stderr


def test_predict_refuses_wrong_size_unless_resized(tmp_path, toy):
    out = tmp_path / "run"
    assert run("train", "--data", str(toy), "--preset", "test", "--epochs", "1", "--batch-size", "8",
               "--out", str(out), "--no-progress").returncode == 0
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(np.zeros((20, 12, 3), np.uint8)))
    r = run("predict", str(out / "checkpoint.npz"), str(big))
    assert r.returncode == 1 and "image is 12x20, the model expects 8x8; pass --resize" in r.stderr
    assert run("predict", str(out / "checkpoint.npz"), str(big), "--resize").returncode == 0
    r = run("predict", str(out / "checkpoint.npz"), str(tmp_path / "missing.png"))
    assert r.returncode == 1 and "cannot read image" in r.stderr
    # 32x32 images, a model trained on 8x8 with patch 4: the position embeddings are resized (paper 3.2)
    big_toy = write_folder(tmp_path / "big", image_folder_files(classes=("a", "b", "c", "d", "e"), size=16, per_class=(1, 2)))
    r = run("evaluate", str(out / "checkpoint.npz"), "--data", str(big_toy), "--json")
    assert r.returncode == 0, r.stderr
    assert "resized (bilinear) to 16x16, 16 patches" in r.stderr and json.loads(r.stdout)["images"] == 10
    r = run("evaluate", str(out / "checkpoint.npz"), "--data", "subset")      # CIFAR's classes, not a..e
    assert r.returncode == 1 and "not trained on: airplane" in r.stderr
    square = tmp_path / "square.png"
    square.write_bytes(png_bytes(np.zeros((16, 16, 3), np.uint8)))
    r = run("predict", str(out / "checkpoint.npz"), str(square), str(big), "--resize")
    assert r.returncode == 0 and r.stdout.count(": ") == 2
    r = run("predict", str(out / "checkpoint.npz"), str(square))              # 16x16 as it is: 4x4 patches
    assert r.returncode == 0 and "resized (bilinear) to 16x16" in r.stderr, r.stderr
    odd = tmp_path / "odd.png"
    odd.write_bytes(png_bytes(np.zeros((10, 10, 3), np.uint8)))              # 10 is not a multiple of 4
    r = run("predict", str(out / "checkpoint.npz"), str(odd))
    assert r.returncode == 1 and "image is 10x10, the model expects 8x8; pass --resize" in r.stderr
    assert "Traceback" not in r.stderr


def test_info_prints_the_machine_record_as_json():
    r = subprocess.run([sys.executable, "-m", "minivit", "info"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert {"minivit", "cpu", "cores", "numpy", "python", "kernels_on"} <= set(record)
    assert record["cores"] == os.cpu_count()


X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512bw

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512bw
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("cpuinfo, cpu_id, isa", [(X86, "family 25 model 17", ["avx2", "avx512f"]), (ARM, None, ["asimd"])])
def test_the_machine_record_names_the_cpu_generation_where_x86_gives_it(monkeypatch, cpuinfo, cpu_id, isa):
    """One model name ("AMD EPYC") covers CPU generations of different speed; x86's family and model numbers tell
    them apart, so the record carries them where /proc/cpuinfo has them, and nothing where it does not; the vector
    ISA comes from x86's flags and ARM's Features alike."""
    import io

    from minivit import machine as m
    monkeypatch.setattr(m, "open", lambda path, *a, **k: io.StringIO(cpuinfo), raising=False)
    record = m.machine()
    assert record.get("cpu_id") == cpu_id
    assert record["isa"] == isa
    if cpu_id:
        assert record["cpu"] == "AMD EPYC"


@pytest.mark.parametrize("value, on", [("0", False), ("off", False), ("False", False), ("no", False),
                                       ("1", True), ("ON", True), ("yes", True), ("true", True)])
def test_the_kernel_switch_reads_the_usual_spellings(value, on):
    r = subprocess.run([sys.executable, "-m", "minivit", "info"], capture_output=True, text=True,
                       env=dict(os.environ, MINIVIT_FUSED=value))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kernels_on"] is on


@pytest.mark.parametrize("name, value", [("MINIVIT_FUSED", "maybe"), ("MINIVIT_FUSED", "2"), ("MINIVIT_BLAS", "fast")])
def test_a_switch_with_an_unknown_value_is_refused_in_one_line(name, value):
    r = subprocess.run([sys.executable, "-m", "minivit", "info"], capture_output=True, text=True,
                       env=dict(os.environ, **{name: value}))
    assert r.returncode == 1 and f"{name}={value!r}" in r.stderr and "Traceback" not in r.stderr, r.stderr

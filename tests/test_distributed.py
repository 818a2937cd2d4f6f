"""Data-parallel training over MPI (minivit/train/distributed.py, docs/distributed.md).

The first tests need no MPI: each image's random streams, and an engine that computes a rank's rows
of a global batch. The others launch `mpiexec -n N` (MPICH from PyPI: pip install mpi4py mpich) and
compare with one process; they skip where mpi4py is missing, and fail instead in CI (CI installs it).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import toy_dataset
from minivit import ViTConfig, init_params
from minivit.data.transforms import normalize, channel_stats
from minivit.io.checkpoint import load_checkpoint
from minivit.train.distributed import DistributedError, World, launched_size
from minivit.train.engine import Engine
from minivit.train.random_streams import ImageStreams

HERE = Path(__file__).resolve().parent
DRIVER = [sys.executable, str(HERE / "mpi_driver.py")]


# ------------------------------------------------------------------ without MPI

def test_an_images_draws_do_not_depend_on_how_the_batch_is_split():
    whole = ImageStreams(7, 3, 0, 10)
    parts = [ImageStreams(7, 3, a, b) for a, b in ((0, 4), (4, 5), (5, 10))]
    for shape, dtype in (((10, 3, 4), np.float32), ((10,), np.float64), (10, np.float64)):
        n = lambda k: (k,) + tuple(shape[1:]) if isinstance(shape, tuple) else k
        got = np.concatenate([p.random(n(p.stop - p.start), dtype=dtype) for p in parts])
        np.testing.assert_array_equal(got, whole.random(shape, dtype=dtype))   # the second draw too: streams advance alike
    assert not np.array_equal(ImageStreams(7, 4, 0, 2).random((2, 3)), ImageStreams(7, 3, 0, 2).random((2, 3)))
    with pytest.raises(ValueError, match="first axis must be the images"):
        ImageStreams(0, 0, 0, 4).random((3, 2))


def _batch64(B=12, seed=0):
    cfg = ViTConfig.preset("test", dropout=0.1, attn_dropout=0.1, drop_path=0.2, patch_dropout=0.25, num_classes=5)
    params = {k: v.astype(np.float64) for k, v in init_params(cfg, seed=1).items()}
    data = toy_dataset(n_train=B, seed=seed)
    mean, std = channel_stats(data.train.images)
    return cfg, params, normalize(data.train.images, mean, std, np, np.float64), data.train.labels


def test_the_ranks_rows_sum_to_the_global_batchs_mean_gradient():
    """What the Allreduce adds up: each rank's rows, scaled by their share of the global batch, give the
    loss and gradients of the whole batch (every random stream drawn: dropout, drop path, PatchDropout)."""
    cfg, params, x, y = _batch64()
    engine = Engine(cfg, threads=1)
    whole = engine.loss_and_grads(params, x, y, 0.1, seed=4, step=2)
    for ranks in (2, 3, 5):
        parts = []
        for r in range(ranks):
            rows = slice(len(y) * r // ranks, len(y) * (r + 1) // ranks)          # World.rows of rank r
            parts.append(engine.loss_and_grads(params, x[rows], y[rows], 0.1, seed=4, step=2, first=rows.start,
                                               batch=len(y)))
        assert abs(sum(p[0] for p in parts) - whole[0]) < 1e-12 and sum(p[1] for p in parts) == whole[1]
        for k, g in whole[2].items():
            np.testing.assert_allclose(sum(p[2][k] for p in parts), g, rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("mixing", [False, True])
def test_a_rank_builds_its_rows_of_the_batch_from_the_whole_batchs_draws(mixing):
    """make_batch(keep=...) and the targets of a rank's share equal those rows of the whole batch: crops,
    flips, RandAugment, random erasing, and MixUp/CutMix with each image's partner from another rank."""
    from minivit.config import TrainConfig
    from minivit.train.batches import batch_positions, make_batch
    from minivit.models import classify
    from minivit.train.random_streams import step_stream
    cfg = ViTConfig.preset("test", num_classes=5)
    data = toy_dataset(n_train=40)
    mean, std = channel_stats(data.train.images)
    tcfg = TrainConfig(batch_size=13, seed=2, randaugment=2, random_erasing=0.5, mixup=0.8 if mixing else 0.0,
                       cutmix=1.0 if mixing else 0.0)
    for step in (3, 4):   # CutMix, MixUp (each batch picks one)
        x, y = make_batch(data.train, tcfg, mean, std, 1, 2, step)
        x, y = classify.targets(x, y, cfg, tcfg, mean, std, step_stream(tcfg.seed, step, "mix"))
        for r in range(3):
            rows = slice(13 * r // 3, 13 * (r + 1) // 3)
            keep, partner, mine = batch_positions(13, rows, mixing)
            assert (keep[mine] == np.arange(13)[rows]).all() and len(keep) <= 2 * len(mine)
            xr, yr = make_batch(data.train, tcfg, mean, std, 1, 2, step, keep=keep)
            xr, yr = classify.targets(xr, yr, cfg, tcfg, mean, std, step_stream(tcfg.seed, step, "mix"), partner=partner)
            np.testing.assert_array_equal(xr[mine], x[rows])
            np.testing.assert_array_equal(yr[mine], y[rows])


def test_the_threads_do_not_change_the_draws():
    """Shards are laid out by the thread count; an image's masks follow the image, not its shard."""
    cfg, params, x, y = _batch64(B=16)
    one, two = Engine(cfg, threads=1), Engine(cfg, threads=2)
    a, b = (e.loss_and_grads(params, x, y, 0.0, seed=1, step=9) for e in (one, two))
    two.close()
    assert abs(a[0] - b[0]) < 1e-12
    for k in a[2]:
        np.testing.assert_allclose(a[2][k], b[2][k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_a_world_of_one_changes_nothing():
    w = World()
    grads = {"a": np.ones(3, np.float32)}
    g, loss, correct, extras = w.sum_step(grads, 1.5, 2, [0, 3.0])
    assert g is grads and (loss, correct, extras) == (1.5, 2, [0, 3.0])
    assert w.rows(7) == slice(0, 7) and w.bcast("x") == "x" and w.gather(1) == [1] and w.sum_numbers([1.0]) == [1.0]


def test_the_launchers_process_count_is_read_from_its_variables():
    assert launched_size({}) == 1
    assert launched_size({"PMI_SIZE": "4"}) == 4 and launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3


def test_mpiexec_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # import mpi4py fails
    with pytest.raises(DistributedError, match="pip install mpi4py mpich"):
        World.launched()


# ------------------------------------------------------------------ under mpiexec

def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpi4py = None
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpi4py is None or found is None:
        message = "needs mpi4py and an mpiexec: pip install mpi4py mpich"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI installs them: .ci/run)")
        pytest.skip(message)
    return found


@pytest.fixture
def mpiexec():
    return _mpiexec()


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")}
    return {**env, "MINIVIT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join(sys.path)}


def _launch(mpiexec, n, args, tmp_path, timeout=300, **kw):
    cmd = ([mpiexec, "-n", str(n)] if n else []) + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(tmp_path), **kw)


def _params(folder):
    params, _, _, _ = load_checkpoint(Path(folder) / "checkpoint.npz")
    return params


def _assert_same_params(a, b, rtol, atol):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("ranks, threads", [(2, 1), (3, 1), (2, 2)])   # 3 ranks on 2 cores: oversubscribed
def test_ranks_train_the_model_one_process_trains(mpiexec, tmp_path, ranks, threads):
    """In float64 the summation order is invisible: parameters after 6 steps (AdamW, clipping, EMA,
    dropout, drop path, PatchDropout) and the test set's predictions equal one process's, with one
    thread per rank or two."""
    one = _launch(mpiexec, 0, DRIVER + [str(tmp_path / "one"), "--float64"], tmp_path)
    many = _launch(mpiexec, ranks, DRIVER + [str(tmp_path / "many"), "--float64", "--threads", str(threads)], tmp_path)
    assert one.returncode == 0 and many.returncode == 0, one.stderr + many.stderr
    assert next(iter(_params(tmp_path / "many").values())).dtype == np.float64
    _assert_same_params(_params(tmp_path / "one"), _params(tmp_path / "many"), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.load(tmp_path / "many" / "predictions.npy"),
                                  np.load(tmp_path / "one" / "predictions.npy"))
    assert many.stdout.count("epoch 2:") == 1                   # only rank 0 speaks
    rows = [[json.loads(r) for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "many")]
    assert len(rows[0]) == 2 and [r["test_acc"] for r in rows[0]] == [r["test_acc"] for r in rows[1]]   # split evaluation


def test_a_rank_that_raises_ends_the_job_and_the_run_resumes_on_other_rank_counts(mpiexec, tmp_path):
    """Rank 0 fails after its first epoch's checkpoint: the job ends at once with a line naming the rank,
    the checkpoint is whole, and it resumes on 1 (with 2 threads) and on 3 ranks to the model of an
    unbroken run."""
    t0 = time.monotonic()
    r = _launch(mpiexec, 2, DRIVER + [str(tmp_path / "half"), "--float64", "--crash-after-first-epoch"], tmp_path)
    assert r.returncode != 0 and "rank 0 of 2 failed (Crash)" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60
    assert load_checkpoint(tmp_path / "half" / "checkpoint.npz")[3]["step"] == 3   # 36 images / 12: epoch 1
    full = _launch(mpiexec, 0, DRIVER + [str(tmp_path / "full"), "--float64"], tmp_path)
    assert full.returncode == 0, full.stderr
    for ranks, threads in ((0, 2), (3, 1)):    # 0: one process, no mpiexec, with two threads
        shutil.copytree(tmp_path / "half", tmp_path / f"resumed{ranks}")
        r = _launch(mpiexec, ranks, DRIVER + [str(tmp_path / f"resumed{ranks}"), "--float64", "--resume",
                                              "--threads", str(threads)], tmp_path)
        assert r.returncode == 0 and "resuming from" in r.stdout, r.stderr
        _assert_same_params(_params(tmp_path / "full"), _params(tmp_path / f"resumed{ranks}"), rtol=1e-10, atol=1e-12)


def test_a_rank_that_fails_to_start_ends_the_job(mpiexec, tmp_path):
    """Trainer() raises on rank 1 while rank 0 waits for it in its first collective: the job ends, naming it."""
    r = _launch(mpiexec, 2, DRIVER + [str(tmp_path / "run"), "--rank-1-fails-to-start"], tmp_path, timeout=120)
    assert r.returncode != 0 and "rank 1 of 2 failed" in r.stderr, r.stderr


def test_ranks_without_rows_add_zeros(mpiexec, tmp_path):
    """Batches of 5 on 3 ranks give rows 1, 2, 2, and the epoch's last batch of 1 image (36 = 7 x 5 + 1)
    leaves two ranks with none: they add zeros to the sum, and the run is one process's."""
    args = ["--float64", "--batch-size", "5"]
    one = _launch(mpiexec, 0, DRIVER + [str(tmp_path / "one"), *args], tmp_path)
    many = _launch(mpiexec, 3, DRIVER + [str(tmp_path / "many"), *args], tmp_path)
    assert one.returncode == 0 and many.returncode == 0, one.stderr + many.stderr
    assert load_checkpoint(tmp_path / "many" / "checkpoint.npz")[3]["step"] == 16
    _assert_same_params(_params(tmp_path / "one"), _params(tmp_path / "many"), rtol=1e-10, atol=1e-12)


TOY_TRAIN = ["--preset", "test", "--batch-size", "8", "--no-progress", "--dropout", "0.1", "--lr", "1e-3",
             "--warmup", "0.5"]


def _toy_folder(tmp_path):
    from datagen import image_folder_files, write_folder
    return write_folder(tmp_path / "data", image_folder_files(classes=tuple("abcde"), size=8, per_class=(6, 2)))


def test_mpiexec_minivit_train_is_the_same_command(mpiexec, tmp_path):
    """The README's command under mpiexec: one run folder (no --out: rank 0 names it), written by rank 0
    alone, one report, and the one-process model to float32 rounding."""
    data = _toy_folder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = ["-m", "minivit", "train", "--data", str(data), "--epochs", "2", *TOY_TRAIN]
    one = _launch(mpiexec, 0, [sys.executable, *args], tmp_path, cwd=tmp_path / "a")
    two = _launch(mpiexec, 2, [sys.executable, *args], tmp_path, cwd=tmp_path / "b")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert two.stdout.count("done:") == 1 and "MPI: 2 ranks" in two.stdout
    (run_one,), (run_two,) = (list((tmp_path / d / "runs").iterdir()) for d in ("a", "b"))
    assert sorted(p.name for p in run_two.iterdir()) == sorted(p.name for p in run_one.iterdir())
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["runs"]
    a, b = _params(run_one), _params(run_two)
    # float32: the ranks' sums are added in another order, so the gradients differ in their last bits;
    # AdamW divides by sqrt(v), which can blow a last-bit difference up to a whole step of size lr
    # where a gradient is near zero. So: every parameter within 2 lr per step (4 steps), nearly all
    # far closer.
    diffs = np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a])
    assert diffs.max() <= 2 * 1e-3 * 4 and np.mean(diffs < 1e-5) > 0.99, (diffs.max(), np.mean(diffs < 1e-5))


def test_a_time_budget_is_kept_by_rank_0s_clock(mpiexec, tmp_path):
    """With --time-budget each rank would read its own clock and stop after a different step, and one would
    wait for the others' sum forever; the ranks agree on rank 0's clock, so the run ends, once."""
    data = _toy_folder(tmp_path)
    r = _launch(mpiexec, 2, [sys.executable, "-m", "minivit", "train", "--data", str(data), "--out",
                             str(tmp_path / "run"), "--time-budget", "0.005", *TOY_TRAIN], tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.count("done:") == 1, r.stdout + r.stderr
    meta = load_checkpoint(tmp_path / "run" / "checkpoint.npz")[3]
    assert meta["step"] > 0 and meta["elapsed"] >= 0.005 * 60 and meta["ranks"] == 2


def test_a_killed_rank_ends_the_job_within_seconds(mpiexec, tmp_path):
    """kill -9 of rank 1 in the middle of a run: mpiexec ends the job, its message names the process
    that rank 0's first line maps to rank 1, and the last checkpoint loads."""
    data = _toy_folder(tmp_path)
    out = tmp_path / "run"
    p = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "minivit", "train", "--data", str(data),
                          "--out", str(out), "--epochs", "100000", *TOY_TRAIN], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=_env(tmp_path))
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("epoch 2:"):
            break
    ranks = next(line for line in lines if line.startswith("MPI: 2 ranks"))
    pid = int(ranks.split("rank 1: pid ")[1].split()[0])
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    rest, _ = p.communicate(timeout=60)
    assert p.returncode != 0 and time.monotonic() - t0 < 30, (p.returncode, rest)
    assert f"PID {pid}" in rest, rest      # MPICH: "BAD TERMINATION ... PID <pid> ... KILLED BY SIGNAL: 9"
    assert load_checkpoint(out / "checkpoint.npz")[3]["step"] >= 4


def test_ctrl_c_on_mpiexec_saves_once_from_rank_0(mpiexec, tmp_path):
    data = _toy_folder(tmp_path)
    out = tmp_path / "run"
    p = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "minivit", "train", "--data", str(data),
                          "--out", str(out), "--epochs", "100000", *TOY_TRAIN], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=_env(tmp_path))
    for line in p.stdout:
        if line.startswith("epoch 2:"):
            break
    p.send_signal(signal.SIGINT)
    rest, _ = p.communicate(timeout=60)
    assert rest.count("interrupted (Ctrl-C) at step") == 1, rest
    step = int(rest.split("interrupted (Ctrl-C) at step ")[1].split(";")[0])
    assert load_checkpoint(out / "checkpoint.npz")[3]["step"] == step
    assert not (out / ".lock").exists()


def test_profile_under_mpiexec_reports_the_allreduce(mpiexec, tmp_path):
    r = _launch(mpiexec, 2, [sys.executable, "-m", "minivit", "profile", "--preset", "test", "--batch-size", "8",
                             "--steps", "2"], tmp_path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "on each of 2 MPI ranks" in r.stdout and r.stdout.count("allreduce (MPI)") == 1, r.stdout


def test_commands_of_one_process_refuse_mpiexec(mpiexec, tmp_path):
    r = _launch(mpiexec, 2, [sys.executable, "-m", "minivit", "evaluate", "nothing.npz"], tmp_path, cwd=tmp_path)
    assert r.returncode != 0 and "`minivit evaluate` runs in one process" in r.stderr, r.stderr


def test_a_batch_smaller_than_the_ranks_trains_and_profile_says_why_it_cannot(mpiexec, tmp_path):
    data = _toy_folder(tmp_path)
    r = _launch(mpiexec, 3, [sys.executable, "-m", "minivit", "train", "--data", str(data), "--out", str(tmp_path / "run"),
                             "--epochs", "1", *TOY_TRAIN, "--batch-size", "2"], tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.count("done:") == 1, r.stdout + r.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[3]["step"] == 15   # 30 images in 2s
    r = _launch(mpiexec, 2, [sys.executable, "-m", "minivit", "profile", "--preset", "test", "--batch-size", "1",
                             "--steps", "1"], tmp_path, cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "give a batch of at least 2 images" in r.stderr, r.stderr


def _slow_folder(tmp_path):
    """6,000 images of 128 x 128 pixels: a few seconds to decode, long enough to be interrupted in. Smooth
    gradients, so the files are small; decoding costs by the pixel all the same."""
    from datagen import png_bytes
    ramp = np.add.outer(np.arange(128), np.arange(128))
    pngs = [png_bytes(np.stack([(ramp + 7 * k + c) % 256 for c in range(3)], axis=-1).astype(np.uint8))
            for k in range(20)]
    for split, n in (("train", 3000), ("test", 5)):
        for c in "ab":
            d = tmp_path / "slow" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:04d}.png").write_bytes(pngs[i % len(pngs)])
    return tmp_path / "slow"


def _rank_pids(marker):
    """The PIDs of the Python processes whose command line holds `marker`, lowest (rank 0's: started first) first."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if d.name.isdigit() and marker.encode() in argv and b"minivit" in argv and "python" in Path(argv[0].decode()).name:
            found.append(int(d.name))
    return sorted(found)


@pytest.mark.parametrize("whom, code", [("mpiexec", 130), ("rank 0", 143)])
def test_a_signal_while_the_data_loads_ends_the_job_within_seconds(mpiexec, tmp_path, whom, code):
    """Ctrl-C on mpiexec (every rank gets it), or SIGTERM to rank 0 alone, while rank 0 decodes the images and
    rank 1 waits for it in a barrier: the job ends with 130 or 143, and no run folder is left behind."""
    data, out = _slow_folder(tmp_path), tmp_path / "run"
    p = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "minivit", "train", "--data", str(data),
                          "--out", str(out), *TOY_TRAIN], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_env(tmp_path))
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:   # made once the command runs, before the data loads
        time.sleep(0.05)
    time.sleep(0.3)   # rank 0 decodes for several seconds from here
    if whom == "mpiexec":
        p.send_signal(signal.SIGINT)
    else:
        os.kill(_rank_pids(str(out))[0], signal.SIGTERM)
    try:
        stdout, stderr = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        stdout, stderr = p.communicate()
        pytest.fail(f"the job still ran 30 s after the signal: {stderr[-2000:]}")
    assert "data:" not in stdout, "the images had loaded before the signal: make _slow_folder slower"
    assert p.returncode == code, (p.returncode, stderr)
    assert "rank 0 of 2 ended with status" in stderr and not out.exists(), stderr

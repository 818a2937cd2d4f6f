"""Test tools: the package's own gradient checker (minivit.tools.gradcheck), and what several test files share."""
import importlib
import os
from contextlib import contextmanager

import numpy as np
import pytest

from minivit import backend
from minivit.data import Dataset, Split
from minivit.tools.gradcheck import check_grads, numerical_grad, rel_error  # noqa: F401


@contextmanager
def kernels(on):
    """The CPU and CUDA kernels on (or off: the layers' own lines) inside the block, as they were after it."""
    before = backend.fused_on()
    backend.use_fused_kernels(on)
    try:
        yield
    finally:
        backend.use_fused_kernels(before)


def scalar_of(out_fn, R):
    """L = sum(out * R) for a fixed random R, so dL/dout = R."""
    return lambda: float((out_fn() * R).sum())


def toy_dataset(n_train=24, n_test=10, seed=0):
    """Random 8x8 uint8 images of 5 classes (the `test` preset's shape)."""
    rng = np.random.default_rng(seed)
    mk = lambda n: Split(rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8), rng.integers(0, 5, n))
    return Dataset(mk(n_train), mk(n_test), tuple("abcde"), "toy")


class Crash(Exception):
    """Raised by crash_after_first_epoch: a run that dies once its first epoch's checkpoint is written."""


def crash_after_first_epoch(history):
    """A Trainer on_epoch_end hook (called after the epoch's checkpoint is saved)."""
    raise Crash


def full_and_resumed(cfg, tcfg, data, folder):
    """Two Trainer runs of the same settings: one uninterrupted, one that crashes after its first
    epoch and is resumed from its checkpoint. Returns both trainers, finished, and asserts that
    their parameters end bit-identical."""
    from minivit.train import Trainer
    quiet = dict(progress=False, log=lambda *_: None, plots=False)
    full = Trainer(cfg, tcfg, data, folder / "full", **quiet)
    full.fit()
    with pytest.raises(Crash):
        Trainer(cfg, tcfg, data, folder / "half", on_epoch_end=crash_after_first_epoch, **quiet).fit()
    second = Trainer(cfg, tcfg, data, folder / "half", resume=True, **quiet)
    second.fit()
    for k in full.params:
        np.testing.assert_array_equal(second.params[k], full.params[k])
    return full, second


def needs(module, install):
    """Import an optional dependency, or skip the test without it; in CI, which installs every extra
    (.ci/run), fail instead."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing; CI installs it (.ci/run): {install}")
        pytest.skip(f"needs {module}: {install}")

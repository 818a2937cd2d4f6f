"""Array backend: NumPy on the CPU, CuPy on a GPU.

Math code never asks this module which backend is active. It takes its array
module from its inputs with `get_array_module(x)` (CuPy's documented pattern for
CPU/GPU-agnostic code), so one function serves both. Only the edges (parameter
init, moving a batch to the device, loading a checkpoint) read the configured
backend through `xp()`.

The backend is chosen with `use_backend("numpy" | "cupy")` or, before the first
call, the environment variable MINIVIT_BACKEND.
"""
import os
import sys

import numpy as np

BACKENDS = ("numpy", "cupy")
_current = None  # resolved lazily so MINIVIT_BACKEND may be set after import


class BackendError(RuntimeError):
    """The requested array backend cannot be used on this machine."""


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed: install the wheel "
            "matching your CUDA version (e.g. `pip install cupy-cuda12x`) or use "
            f"backend 'numpy' ({e})") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when no driver is present
        raise BackendError(f"backend 'cupy': CuPy is installed but no CUDA GPU is usable ({e})") from None
    if n == 0:
        raise BackendError("backend 'cupy': CuPy is installed but no CUDA GPU was found")
    return cupy


def use_backend(name):
    """Select the array backend used by init_params, to_device and checkpoint loading."""
    global _current
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "cupy":
        _import_cupy()
    _current = name
    return name


def backend_name():
    """Name of the configured backend ('numpy' unless chosen otherwise)."""
    if _current is None:
        use_backend(os.environ.get("MINIVIT_BACKEND", "numpy").strip().lower() or "numpy")
    return _current


def xp():
    """Array module of the configured backend; for the edges only, never for math."""
    return _import_cupy() if backend_name() == "cupy" else np


def get_array_module(*arrays):
    """numpy or cupy, whichever the arrays live in (numpy when CuPy was never imported)."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return np


def to_device(x, dtype=None):
    """Copy a host array (or anything array-like) to the configured backend."""
    return xp().asarray(x, dtype=dtype)


def to_numpy(x):
    """Copy an array from any backend to a NumPy array on the host."""
    if hasattr(x, "get") and not isinstance(x, np.ndarray):
        return x.get()
    return np.asarray(x)


def erf(x):
    """Elementwise error function of an array, on the array's backend.

    NumPy has no erf. Its accurate evaluation is a solved numerical problem and not
    what minivit teaches, so we take SciPy's (and CuPy's port of it on a GPU) for float64
    and on the GPU. SciPy computes its float32 erf in float64, too slow for training, so the
    float32 NumPy GELU uses a rational approximation written out in
    minivit.activations.normal_cdf_as instead.
    """
    if get_array_module(x) is np:
        from scipy.special import erf as _erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(x)

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

from .contract import KERNELS

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


_fused = None  # None: read MINIVIT_FUSED on first use
_cpu_kernels = None  # minivit.cpu.kernels once imported, False when numba is missing

_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def switch(name, default="1"):
    """An on/off environment variable read the usual ways (1/true/on/yes, 0/false/off/no, any case); anything
    else is refused with a clear message instead of silently meaning one or the other."""
    value = os.environ.get(name, default).strip().lower() or default
    if value not in _ON + _OFF:
        raise BackendError(f"{name}={os.environ.get(name)!r}: use one of {', '.join(_ON)} (on) or {', '.join(_OFF)} (off)")
    return value in _ON


def use_fused_kernels(on):
    """Turn the kernels on or off (default on; MINIVIT_FUSED=0 sets off): the CUDA kernels of the CuPy path
    and, where numba is installed, the CPU kernels of the NumPy path.

    Off, every layer runs its own lines, the textbook form, one pass (on a GPU one launch) per line: the
    baseline that benchmarks/gpu_step.py, benchmarks/compare_step.py --fused 0 and notebook 7 measure the
    kernels against."""
    global _fused
    _fused = bool(on)


def fused_on():
    """True unless the kernels were turned off (use_fused_kernels, MINIVIT_FUSED=0)."""
    global _fused
    if _fused is None:
        _fused = switch("MINIVIT_FUSED")
    return _fused


def fused(x, name):
    """The kernel `name` of the contract (minivit/contract.py) for x's kind of array, or None.

    A layer asks `kernel = fused(x, "layernorm_forward")` and, given a function, calls it in place
    of its own lines: from minivit.gpu.kernels (CUDA) for a CuPy array, from minivit.cpu.kernels
    (numba) for a NumPy array when numba is installed. None when the kernels are off, the module
    leaves the name out, or x is not of the dtype the contract names (float32/float64, or uint8 images)."""
    if name not in KERNELS:
        raise KeyError(f"{name!r} is not a kernel of minivit/contract.py")
    want = (np.float32, np.float64) if KERNELS[name].takes == "float" else (np.uint8,)
    if getattr(x, "dtype", None) not in want:
        return None
    if isinstance(x, np.ndarray):
        module = cpu_kernels()
    elif "cupy" in sys.modules and get_array_module(x) is not np:
        module = gpu_kernels()
    else:
        return None
    return getattr(module, name, None) if module else None


def cpu_kernels():
    """minivit.cpu.kernels if the kernels are on and numba can be imported, else None."""
    global _cpu_kernels
    if not fused_on():
        return None
    if _cpu_kernels is None:
        try:
            from .cpu import kernels
            _cpu_kernels = kernels
        except ImportError:   # numba is optional (pip install minivit[fast]): the layers' lines run
            _cpu_kernels = False
    return _cpu_kernels or None


def cpu_blas():
    """minivit.cpu.blas when the CPU kernels are on and Intel's MKL loads, else None: the dense layers'
    and attention's products are then MKL's (docs/cpu_kernels.md), otherwise NumPy's own BLAS."""
    if cpu_kernels() is None:
        return None
    from .cpu import blas
    return blas if blas.available() else None


def gpu_kernels():
    """minivit.gpu.kernels if the kernels are on (MINIVIT_FUSED, default on), else None.
    Only for arrays that live on a GPU: see fused(x, name)."""
    if not fused_on():
        return None
    from .gpu import kernels
    return kernels


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
    what minivit teaches, so we take SciPy's (and CuPy's port of it on a GPU). SciPy computes
    a float32 erf in float64: slow, but this is the lesson's line; the CPU kernel
    (minivit/cpu/kernels.py) has its own float32 erf for speed.
    """
    if get_array_module(x) is np:
        from scipy.special import erf as _erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(x)

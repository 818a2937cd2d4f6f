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


_fused = None  # None: read MINIVIT_FUSED on first use
_cpu_kernels = None  # minivit.cpu.kernels once imported, False when numba is missing


def use_fused_kernels(on):
    """Turn the fused kernels on or off (default on; MINIVIT_FUSED=0 sets off): the CUDA kernels of
    the CuPy path and, where numba is installed, the CPU kernels of the NumPy path.

    Off, every layer runs its NumPy-style lines, one pass (on a GPU one launch) per line: the
    baseline that benchmarks/gpu_step.py, benchmarks/compare_step.py --fused 0 and notebook 7
    measure the kernels against."""
    global _fused
    _fused = bool(on)


def fused_on():
    """True unless the fused kernels were turned off (use_fused_kernels, MINIVIT_FUSED=0)."""
    global _fused
    if _fused is None:
        _fused = os.environ.get("MINIVIT_FUSED", "1").strip() != "0"
    return _fused


def fused(x, name):
    """The fused kernel `name` for x's kind of array, or None.

    A layer asks `kernel = fused(x, "layernorm_forward")` and, given a function, calls it in place
    of its NumPy-style lines: from minivit.gpu.kernels (CUDA) for a CuPy array, from
    minivit.cpu.kernels (numba) for a NumPy array when numba is installed. None when the
    kernels are off, the module has no such kernel, or x is not a float32/float64 array."""
    if getattr(x, "dtype", None) not in (np.float32, np.float64):  # the kernels are written for these two
        return None
    if isinstance(x, np.ndarray):
        module = cpu_kernels()
    elif "cupy" in sys.modules and get_array_module(x) is not np:
        module = fused_kernels()
    else:
        return None
    return getattr(module, name, None) if module else None


def cpu_kernels():
    """minivit.cpu.kernels if the fused kernels are on and numba can be imported, else None."""
    global _cpu_kernels
    if not fused_on():
        return None
    if _cpu_kernels is None:
        try:
            from .cpu import kernels
            _cpu_kernels = kernels
        except ImportError:   # numba is optional (pip install minivit[fast]): the NumPy lines run
            _cpu_kernels = False
    return _cpu_kernels or None


def cpu_blas():
    """minivit.cpu.blas when the CPU kernels are on and Intel's MKL loads, else None: the dense layers'
    and attention's products are then MKL's (docs/cpu_kernels.md), otherwise NumPy's own BLAS."""
    if cpu_kernels() is None:
        return None
    from .cpu import blas
    return blas if blas.available() else None


def fused_kernels():
    """minivit.gpu.kernels if the fused kernels are on (MINIVIT_FUSED, default on), else None.
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
    what minivit teaches, so we take SciPy's (and CuPy's port of it on a GPU) for float64
    and on the GPU. SciPy computes its float32 erf in float64, too slow for training, so the
    float32 NumPy GELU uses a rational approximation written out in
    minivit.layers.erf.normal_cdf_as instead.
    """
    if get_array_module(x) is np:
        from scipy.special import erf as _erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(x)


def machine():
    """What a measurement ran on, for the raw result files: CPU model, cores, vector ISA, the BLAS
    kernel threadpoolctl reports, Python, NumPy (and PyTorch, CuPy where loaded) versions."""
    import platform
    info = {"python": platform.python_version(), "numpy": np.__version__, "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
        flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
        info["cpu"] = model or info["cpu"]
        info["isa"] = [f for f in ("avx2", "avx512f", "amx_tile", "asimd", "sve") if f in flags]
    except OSError:
        pass
    blas = cpu_blas()
    if blas:
        info["mkl"] = blas.version()   # minivit's own products (minivit/cpu/blas.py)
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}".strip()
                        for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        pass
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    if "cupy" in sys.modules:   # the GPU itself is named by the GPU scripts (benchmarks/gpu_step.py)
        info["cupy"] = sys.modules["cupy"].__version__
    return info

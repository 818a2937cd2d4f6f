"""What a measurement ran on: the record every raw result file and run folder carries (docs/results.md
names each figure's machine from it), and what `minivit info` prints for a bug report."""
import os
import platform
import sys

import numpy as np

from .backend import cpu_blas, cpu_kernels


def machine():
    """CPU model (on x86 also its family and model numbers), cores, vector ISA, the BLAS kernel threadpoolctl
    reports, MKL where minivit's products use it, numba where the CPU kernels are on, Python, NumPy (and
    PyTorch, CuPy where loaded) versions."""
    info = {"python": platform.python_version(), "numpy": np.__version__, "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]   # the first processor's fields; the others repeat them
        fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
        flags = set((fields.get("flags") or fields.get("Features", "")).split())   # x86 says flags, ARM Features
        info["cpu"] = fields.get("model name") or info["cpu"]
        if fields.get("cpu family") and fields.get("model"):   # x86: tells apart generations under one name ("AMD EPYC")
            info["cpu_id"] = f"family {fields['cpu family']} model {fields['model']}"
        info["isa"] = [f for f in ("avx2", "avx512f", "amx_tile", "asimd", "sve") if f in flags]
    except OSError:
        pass
    if cpu_kernels() is not None:
        info["numba"] = sys.modules["numba"].__version__   # the CPU kernels are on (minivit/cpu/kernels.py)
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


def available_memory():
    """Bytes of memory this machine can still give (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None

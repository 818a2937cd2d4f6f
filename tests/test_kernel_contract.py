"""The kernel contract (minivit/contract.py): both kernel modules implement its names with its signatures,
and the layers ask for no name outside it."""
import ast
import inspect
import os
from pathlib import Path

import numpy as np
import pytest

from minivit import backend
from minivit.contract import KERNELS

PKG = Path(__file__).parent.parent / "minivit"


def cpu_module():
    try:
        from minivit.cpu import kernels
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("the CPU kernels need numba: pip install minivit[fast]")
    return kernels


def gpu_module():
    from minivit.gpu import kernels   # imports CuPy only when a kernel runs: readable on any machine
    return kernels


# What each module leaves out, on purpose: the CPU's step has no augmentation kernel, and its clipping and
# AdamW norms are one BLAS call each already; the GPU runs the convolution's im2col lines.
LEFT_OUT = {"cpu": {"augment_normalize", "sum_of_squares", "scale_all"}, "gpu": {"conv_windows", "conv_windows_adjoint"}}


@pytest.mark.parametrize("side", ["cpu", "gpu"])
def test_each_module_implements_the_contract_with_its_signatures(side):
    module = cpu_module() if side == "cpu" else gpu_module()
    provided = {name for name in KERNELS if hasattr(module, name)}
    assert provided == set(KERNELS) - LEFT_OUT[side], sorted(set(KERNELS) ^ provided)
    for name in provided:
        params = list(inspect.signature(getattr(module, name)).parameters)
        want = list(KERNELS[name].params)
        assert params[:len(want)] == want, f"{side} {name}{tuple(params)} against the contract's {tuple(want)}"


def called_kernel_names():
    """Every literal name passed as fused(x, "name") anywhere in the package."""
    names = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "fused" and len(node.args) == 2:
                arg = node.args[1]
                assert isinstance(arg, ast.Constant), f"{path}: fused() with a name that is not a literal"
                names.add((path.relative_to(PKG).as_posix(), arg.value))
    return names


def test_the_layers_ask_only_for_contract_names_and_every_name_is_asked_for():
    calls = called_kernel_names()
    assert calls, "no fused() call found: the scan is broken"
    assert {n for _, n in calls} <= set(KERNELS), sorted({n for _, n in calls} - set(KERNELS))
    assert {n for _, n in calls} == set(KERNELS), sorted(set(KERNELS) - {n for _, n in calls})


def test_fused_refuses_a_name_outside_the_contract():
    with pytest.raises(KeyError, match="not a kernel"):
        backend.fused(np.zeros(3, np.float32), "bias_gelu")
    assert backend.fused(np.zeros(3, np.uint8), "softmax") is None            # a float kernel, an image array
    assert backend.fused(np.zeros((1, 3, 4, 4), np.float32), "augment_normalize") is None   # and the other way


def test_no_layer_or_model_decides_a_fast_path_by_itself():
    """The one-line dispatch is the only trace of the kernels in layers/ and models/: no module there imports
    the kernel modules, asks which backend it runs on, or names a kernel module's function."""
    for folder in ("layers", "models"):
        for path in (PKG / folder).glob("*.py"):
            text = path.read_text()
            for needle in ("cpu_kernels(", "gpu_kernels(", "from ..cpu", "from ..gpu", "is not np", "backend_name("):
                assert needle not in text, f"{path.name} holds {needle!r}"

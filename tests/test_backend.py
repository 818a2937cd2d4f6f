"""Backend selection, and NumPy vs CuPy agreement (skipped without a usable GPU)."""
import subprocess
import sys

import numpy as np
import pytest

import minivit as mv
from minivit import backend


def _cupy_usable():
    try:
        backend._import_cupy()
        return True
    except mv.BackendError:
        return False


HAS_GPU = _cupy_usable()


def test_default_is_numpy_and_math_follows_the_arrays():
    assert mv.backend_name() in mv.backend.BACKENDS
    x = np.ones(3)
    assert mv.get_array_module(x) is np
    assert isinstance(mv.to_numpy(x), np.ndarray)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU; the error path is for machines without one")
def test_cupy_without_gpu_or_package_is_a_clear_error():
    with pytest.raises(mv.BackendError, match="cupy"):
        mv.use_backend("cupy")
    assert mv.backend_name() == "numpy"  # the failed switch changed nothing


def test_environment_variable_selects_backend():
    code = "import minivit; print(minivit.backend_name())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "MINIVIT_BACKEND": "numpy"})
    assert out.stdout.strip() == "numpy"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "MINIVIT_BACKEND": "tpu"})
    assert bad.returncode != 0 and "unknown backend 'tpu'" in bad.stderr


@pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA GPU")
def test_numpy_and_cupy_agree_on_forward_backward_and_step():
    import cupy
    cfg = mv.ViTConfig.preset("test", dropout=0.0, pool="gap")
    host = mv.init_params(cfg, dtype="float64")
    host = {k: v + 0.1 * np.random.default_rng(0).standard_normal(v.shape) for k, v in host.items()}
    dev = {k: cupy.asarray(v) for k, v in host.items()}
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8))
    y = np.array([0, 1, 2, 3])
    results = []
    for params, xx, yy in ((host, x, y), (dev, cupy.asarray(x), cupy.asarray(y))):
        logits, cache = mv.forward(params, xx, cfg)
        loss, dl = mv.cross_entropy(logits, yy, 0.1)
        grads = mv.backward(dl, cache)
        opt = mv.AdamW(lr=1e-3, weight_decay=0.05)
        opt.step(params, grads)
        results.append((mv.to_numpy(logits), {k: mv.to_numpy(v) for k, v in grads.items()},
                        {k: mv.to_numpy(v) for k, v in params.items()}))
    (l1, g1, p1), (l2, g2, p2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-10, atol=1e-12)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-8, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA GPU")
def test_numpy_and_cupy_agree_on_masked_patch_prediction():
    """The pre-training objective is written with plain array operations (gathers, add.at):
    the same numbers on both backends, for the same corruption plan."""
    import cupy
    from minivit.models.mpp import corruption_plan, mpp_backward, mpp_loss, plan_rows
    cfg = mv.ViTConfig.preset("test", head="mpp")
    host = mv.init_params(cfg, dtype="float64")
    host = {k: v + 0.1 * np.random.default_rng(0).standard_normal(v.shape) for k, v in host.items()}
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8))
    colours = np.random.default_rng(2).integers(0, 512, (6, cfg.num_patches))
    plan = corruption_plan(np.random.default_rng(3), 6, cfg.num_patches, show=(0.4, 0.4, 0.2))
    results = []
    for xp in (np, cupy):
        params = {k: xp.asarray(v) for k, v in host.items()}
        loss, dl, _, _, cache = mpp_loss(params, xp.asarray(x), xp.asarray(colours), cfg,
                                         plan_rows(plan, slice(0, 6), xp), 0.1)
        results.append((float(loss), {k: mv.to_numpy(v) for k, v in mpp_backward(dl, cache).items()}))
    (l1, g1), (l2, g2) = results
    assert abs(l1 - l2) < 1e-10
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-8, atol=1e-12, err_msg=k)

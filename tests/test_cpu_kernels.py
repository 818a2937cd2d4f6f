"""The fused CPU kernels (minivit/cpu/kernels.py, numba) against the NumPy lines they replace.

Each kernel is compared with its layer run with the kernels off (MINIVIT_FUSED=0's path):
float64 to 1e-12 relative, float32 to 1e-5, on shapes whose rows are odd lengths. Then the
whole model's loss and gradients with and without them, NaN propagation (the kernels are
compiled with a subset of fastmath that keeps NaNs), and the choice of kernel by array type.
Without numba the module skips; in CI (which installs it) it fails instead.
"""
import os
import sys

import numpy as np
import pytest

import minivit as mv
from minivit import backend
from minivit.layers.activations import gelu_backward, gelu_forward
from minivit.layers.attention import attention_backward, attention_forward, softmax, softmax_backward
from minivit.layers.loss import cross_entropy
from minivit.layers.norm import layernorm_backward, layernorm_forward
from minivit.models.block import mlp_backward, mlp_forward
from minivit.train.optim import AdamW
import helpers

try:
    import numba  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise RuntimeError("the CPU kernels need numba, which CI installs (.ci/run): pip install -r requirements.txt")
    pytest.skip("needs numba: pip install minivit[fast]", allow_module_level=True)

from minivit.cpu import kernels  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def rel(a, b, floor=1e-300):
    """||a - b|| / ||b||; floor: the smallest norm to measure against (for a reference that is zero
    up to rounding, as LayerNorm's xhat over one feature, where the kernel leaves 1e-13)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), floor)


@pytest.fixture(autouse=True)
def fused_on():
    with helpers.kernels(True):
        yield


def lines(fn):
    """fn() with the kernels off: the layers' own lines."""
    with helpers.kernels(False):
        return fn()


def both(fn):
    """fn() with the kernels on, then off: (the kernels' result, the layers' lines')."""
    with helpers.kernels(True):
        on = fn()
    return on, lines(fn)


def test_numpy_arrays_get_the_cpu_kernels_and_the_switch_turns_them_off():
    assert backend.fused(np.zeros(3, np.float32), "softmax") is kernels.softmax
    assert backend.fused(np.zeros(3, np.float64), "layernorm_backward") is kernels.layernorm_backward
    assert backend.fused(np.zeros(3, np.float16), "softmax") is None         # written for float32/64 only
    assert backend.fused(np.zeros(3, np.float32), "scale_all") is None       # a GPU kernel only
    assert backend.fused(None, "adamw_step") is None
    backend.use_fused_kernels(False)
    assert backend.fused(np.zeros(3, np.float32), "softmax") is None


def test_without_numba_the_numpy_lines_run(monkeypatch):
    monkeypatch.setattr(backend, "_cpu_kernels", None)
    monkeypatch.setitem(sys.modules, "numba", None)                         # import numba fails
    monkeypatch.delitem(sys.modules, "minivit.cpu.kernels", raising=False)
    monkeypatch.delattr(sys.modules["minivit.cpu"], "kernels", raising=False)
    assert backend.fused(np.zeros(3, np.float32), "softmax") is None
    x = np.random.default_rng(0).standard_normal((4, 7))
    assert np.allclose(softmax(x).sum(axis=-1), 1.0)


def test_vector_exp_is_exp_to_a_few_rounding_steps():
    x = np.concatenate([np.linspace(-720, 720, 14401), np.random.default_rng(0).standard_normal(2000) * 5, [0.0, -0.0]])
    got = np.array([kernels.vector_exp(v) for v in x])
    want = np.exp(np.clip(x, -708.0, 709.0))                     # it stops at the normal range's ends
    assert (np.abs(got - want) <= 1e-14 * want).all()
    assert np.isnan(kernels.vector_exp(np.nan)) and kernels.vector_exp(-np.inf) < 1e-300
    x32 = x[(x > -87) & (x < 88)].astype(np.float32)
    got32 = np.array([kernels.vector_expf(v) for v in x32])          # float32 values, returned as Python floats
    want32 = np.exp(x32.astype(np.float64))
    assert (np.abs(got32 - want32) <= 1.5e-7 * want32).all() and (got32 == got32.astype(np.float32)).all()
    assert np.isnan(kernels.vector_expf(np.float32(np.nan)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 37), (1, 1), (2, 65, 64), (0, 8)])
def test_layernorm(dtype, shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(shape[-1]).astype(dtype), rng.standard_normal(shape[-1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    def run():
        y, cache = layernorm_forward(x.copy(), w, b)
        y_eval, none = layernorm_forward(x.copy(), w, b, keep_cache=False)
        assert none is None and np.array_equal(y, y_eval)
        return (y, cache.xhat, cache.rstd) + tuple(layernorm_backward(dy, cache))
    on, off = both(run)
    for a, b_ in zip(on, off):
        assert a.dtype == dtype and rel(a, b_, floor=max(np.sqrt(a.size), 1e-300)) < TOL[dtype]   # entries of order 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["exact", "tanh"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gelu_with_and_without_bias(dtype, form, with_bias):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 131)) * 3).astype(dtype)
    x[0, :4] = [0.0, -0.0, 9.0, -9.0]
    bias = rng.standard_normal(131).astype(dtype) if with_bias else None
    dy = rng.standard_normal(x.shape).astype(dtype)

    def run():
        y, dydx = gelu_forward(x.copy(), form, bias=bias)
        y_eval, none = gelu_forward(x.copy(), form, keep_cache=False, bias=bias)
        assert none is None
        buf = x.copy()
        y_in_place, _ = gelu_forward(buf, form, out=buf, bias=bias)
        return y, dydx, y_eval, y_in_place, gelu_backward(dy, dydx)
    on, off = both(run)
    # float32: both use A&S 7.1.26 for the exact form, both in float32 arithmetic
    for a, b_ in zip(on, off):
        assert a.dtype == dtype and rel(a, b_) < TOL[dtype]
    h = x.astype(np.float64) + (0 if bias is None else bias)
    want = lines(lambda: gelu_forward(h, form)[0])     # the layer's lines in float64: the formula
    assert rel(on[0], want) < (1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 17, 65])
def test_softmax_scaled_and_its_backward(dtype, n):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 3, n, n)) * 4).astype(dtype)
    x[0, 0, 0] += 500.0                                   # a row far from the others: its own maximum
    dp = rng.standard_normal(x.shape).astype(dtype)
    p = ref = lines(lambda: softmax(x.astype(np.float64) * 0.25))   # the layer's lines in float64: the formula
    assert rel(kernels.softmax(x, scale=0.25), ref) < TOL[dtype]
    buf = x.copy()
    assert kernels.softmax(buf, out=buf, scale=0.25) is buf and rel(buf, ref) < TOL[dtype]      # in place
    wide = x.copy()
    wide[1, 2, 0, :] = np.linspace(-300, 300, n)                 # logits spanning more than 60: each row its own shift
    ref_wide = lines(lambda: softmax(wide.astype(np.float64) * 0.25))
    assert rel(kernels.softmax(wide, scale=0.25), ref_wide) < TOL[dtype]
    ds = lines(lambda: 0.25 * softmax_backward(dp.astype(np.float64), p))
    assert rel(kernels.softmax_backward(dp, p.astype(dtype), scale=0.25), ds) < 10 * TOL[dtype]
    on, off = both(lambda: (softmax(x), softmax_backward(dp, softmax(x))))
    for a, b_ in zip(on, off):
        assert rel(a, b_) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_forward_backward(dtype):
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((3, 2, 3, 17, 8)).astype(dtype)      # strided views, as mhsa passes them
    q, k, v = qkv.transpose(0, 1, 2, 3, 4)
    dout = rng.standard_normal(q.shape).astype(dtype)

    on_cache, off_cache = [], []

    def run():
        out, cache = attention_forward(q, k, v)
        (on_cache if backend.fused_on() else off_cache).append(cache)
        return (out,) + tuple(attention_backward(dout, cache))
    on, off = both(run)
    for a, b_ in zip(on, off):
        assert rel(a, b_) < 10 * TOL[dtype]
    ref, _ = lines(lambda: attention_forward(*(a.astype(np.float64) for a in (q, k, v))))   # the layer's, float64
    assert rel(on[0], ref) < 10 * TOL[dtype]
    assert type(on_cache[0]) is type(off_cache[0])        # one cache type, whoever ran forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(dtype, smoothing):
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((13, 10)) * 5).astype(dtype)
    labels = rng.integers(0, 10, 13)
    on, off = both(lambda: cross_entropy(logits, labels, smoothing))
    assert rel(on[0], off[0]) < TOL[dtype] and rel(on[1], off[1]) < TOL[dtype]
    assert on[1].dtype == dtype
    with pytest.raises(ValueError, match="labels out of range"):
        cross_entropy(logits, np.full(13, 10), smoothing)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_in_one_call_equals_the_loop_and_keeps_its_state_dict(dtype):
    rng = np.random.default_rng(6)
    shapes = {"w": (7, 5), "b": (5,), "cls_token": (1, 1, 3), "blocks.0.x.w": (3, 2, 4)}
    start = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()} for _ in range(3)]

    def run():
        params = {k: v.copy() for k, v in start.items()}
        opt = AdamW(lr=1e-2, weight_decay=0.1)
        for g in grads:
            opt.step(params, g)
        return params, opt.state_dict()
    (p_on, s_on), (p_off, s_off) = both(run)
    for k in shapes:
        assert rel(p_on[k], p_off[k]) < TOL[dtype]
        assert rel(s_on["m." + k], s_off["m." + k]) < TOL[dtype] and rel(s_on["v." + k], s_off["v." + k]) < TOL[dtype]
        assert s_on["m." + k].shape == shapes[k]


def test_a_nan_still_comes_out_as_nan():
    x = np.ones((2, 8))
    x[1, 3] = np.nan
    y, _ = layernorm_forward(x, np.ones(8), np.zeros(8))
    assert np.isnan(y[1]).all() and np.isfinite(y[0]).all()
    assert np.isnan(softmax(x)[1]).all()
    loss, _ = cross_entropy(x, np.zeros(2, dtype=np.int64))
    assert np.isnan(loss)
    g, _ = gelu_forward(x)
    assert np.isnan(g[1, 3]) and np.isfinite(np.delete(g[1], 3)).all()


def test_the_mlp_adds_fc1s_bias_in_the_gelu_pass():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 9, 12))
    w1, b1, w2, b2 = rng.standard_normal((12, 20)), rng.standard_normal(20), rng.standard_normal((20, 12)), rng.standard_normal(12)
    dy = rng.standard_normal((2, 9, 12))

    def run():
        y, cache = mlp_forward(x, w1, b1, w2, b2)
        return (y,) + tuple(mlp_backward(dy, cache))
    on, off = both(run)
    for a, b_ in zip(on, off):
        assert rel(a, b_) < 1e-12


@pytest.mark.parametrize("overrides", [{}, {"gelu": "tanh", "pool": "gap", "layer_scale": 0.1},
                                       {"pos_embed": "relative", "attn_dropout": 0.1}])
def test_whole_model_loss_and_gradients_with_and_without_the_kernels(overrides):
    cfg = mv.ViTConfig.preset("test", **overrides)
    params = mv.init_params(cfg, seed=0, dtype=np.float64)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, cfg.in_channels, cfg.image_size, cfg.image_size))
    y = rng.integers(0, cfg.num_classes, 5)

    def run():
        logits, cache = mv.forward(params, x, cfg, train=True, rng=np.random.default_rng(0))
        loss, dlogits = cross_entropy(logits, y, 0.1)
        return float(loss), mv.backward(dlogits, cache)
    (l_on, g_on), (l_off, g_off) = both(run)
    assert abs(l_on - l_off) < 1e-12 * abs(l_off)
    for k in g_off:
        assert rel(g_on[k], g_off[k]) < 1e-10, k


def test_float32_model_close_to_float64():
    cfg = mv.ViTConfig.preset("test")
    p64 = mv.init_params(cfg, seed=1, dtype=np.float64)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x = np.random.default_rng(9).standard_normal((4, cfg.in_channels, cfg.image_size, cfg.image_size))
    l64, _ = mv.forward(p64, x, cfg)
    l32, _ = mv.forward(p32, x.astype(np.float32), cfg)
    assert l32.dtype == np.float32 and rel(l32, l64) < 1e-5


def test_the_compiled_code_is_kept_on_disk(tmp_path):
    """The first process compiles a kernel and writes it to the cache; the next loads it instead."""
    import subprocess
    code = ("import numpy as np; from minivit.cpu import kernels as k; k.softmax(np.ones((3, 5), np.float32)); "
            "s = k.softmax_kernel.stats; print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs == [["0", "1"], ["1", "0"]]
    assert list(tmp_path.rglob("*.nbi"))


@pytest.mark.parametrize("kh,kw,stride,pad", [(3, 3, 1, 1), (3, 3, 2, 1), (2, 3, 1, 0), (4, 4, 4, 0),
                                             (5, 5, 2, 2), (2, 2, 3, 1)])
def test_conv_windows_match_im2col_and_col2im(kh, kw, stride, pad):
    """The kernel's conv_windows is im2col with each image's rows as columns, its adjoint col2im, also
    where windows overlap, where they skip pixels (stride 3 > kernel 2) and over the padding."""
    windows, windows_adjoint = kernels.conv_windows, kernels.conv_windows_adjoint
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 2, 7, 8))
    cols = windows(x, kh, kw, stride, pad)                       # (B, C kh kw, Ho Wo)
    rows = mv.im2col(x, kh, kw, stride, pad)                     # (B Ho Wo, C kh kw)
    np.testing.assert_array_equal(cols.transpose(0, 2, 1).reshape(rows.shape), rows)
    c = rng.standard_normal(cols.shape)
    want = mv.col2im(c.transpose(0, 2, 1).reshape(rows.shape), x.shape, kh, kw, stride, pad)
    assert rel(windows_adjoint(c, x.shape, kh, kw, stride, pad), want) < 1e-12


def test_conv2d_matches_the_im2col_product_both_ways():
    """conv2d_forward's per-image products give im2col(x) @ w.reshape(F, -1).T + b, laid out (B, F, Ho, Wo),
    with the kernel and with the layer's lines; the backward passes agree too."""
    rng = np.random.default_rng(10)
    x, w, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    dy = rng.standard_normal((2, 5, 5, 4))

    def run():
        y, cache = mv.conv2d_forward(x, w, b, stride=2, pad=1)
        return (y,) + tuple(mv.conv2d_backward(dy, cache))
    on, off = both(run)
    want = mv.im2col(x, 3, 3, 2, 1) @ w.reshape(5, -1).T + b     # (B Ho Wo, F)
    assert rel(on[0], want.reshape(2, 5, 4, 5).transpose(0, 3, 1, 2)) < 1e-12
    for a, b_ in zip(on, off):
        assert rel(a, b_) < 1e-12

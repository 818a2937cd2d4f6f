"""MKL's matrix products (minivit/cpu/blas.py) against NumPy's `@`, and the model with and without them.

Every product minivit hands to MKL is compared with the same product by NumPy: float32 to 1e-5
relative, float64 to 1e-13, on odd shapes, transposed views, strided views of a qkv array, stacks
of one and two leading axes on both sides of SMALL_PRODUCT, and the cases left to NumPy. Then the
whole model's loss and gradients with MKL on and off, and the switches. Without the mkl wheel the
module skips; in CI (which installs the mkl extra, .ci/run) it fails instead.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minivit as mv
from minivit.cpu import blas

blas.use_mkl(True)   # MKL's code is tested on any CPU, whichever BLAS the vendor rule picks there by default
if not blas.available():
    blas.use_mkl(None)
    if os.environ.get("CI"):
        raise RuntimeError("MKL's products need the mkl wheel, which CI installs (.ci/run): pip install -e '.[mkl]'")
    pytest.skip("needs Intel's MKL: pip install -e '.[mkl]'", allow_module_level=True)


@pytest.fixture(autouse=True, scope="module")
def back_to_the_default():
    yield
    blas.use_mkl(None)

TOL = {np.float32: 1e-5, np.float64: 1e-13}
DTYPES = [np.float32, np.float64]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def check(a, b, trans_a=False, trans_b=False):
    A = a.swapaxes(-1, -2) if trans_a else a
    B = b.swapaxes(-1, -2) if trans_b else b
    want = A @ B
    got = blas.matmul(a, b, trans_a, trans_b)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel(got, want) < TOL[a.dtype.type], (a.shape, a.strides, b.shape, b.strides, trans_a, trans_b)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_dimensional_products_and_their_transposes(dtype, monkeypatch):
    monkeypatch.setattr(blas, "SMALL_SIDE", 1)                    # every product to MKL, odd sizes included
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(dtype)
    check(r(37, 19), r(19, 23))                                   # as stored
    check(r(19, 37).T, r(19, 23))                                 # a transposed view, read as the transpose
    check(r(37, 19), r(23, 19).T)
    check(r(19, 37).T, r(23, 19).T)
    check(r(19, 37), r(19, 23), trans_a=True)                     # the dense layer's x^T dy
    check(r(37, 19), r(23, 19), trans_b=True)                     # its dy W^T
    check(r(37, 19).T, r(23, 19), trans_a=True, trans_b=True)     # a view transposed again: read as stored
    check(r(1, 19), r(19, 1))                                     # degenerate sizes: strides of size-1 axes are free
    check(r(37, 1), r(1, 23))
    check(r(1, 1), r(1, 1))
    check(r(40, 30)[::2, ::3], r(10, 7))                          # neither axis of unit stride: copied first
    check(r(37, 19)[::-1], r(19, 5))                              # a negative stride: copied first
    check(r(37, 40)[:, 3:22], r(19, 23))                          # a row stride longer than the row
    check(r(300, 130), r(130, 129), trans_a=False)                # a real layer's size


def test_small_products_go_to_numpy(monkeypatch):
    calls = []
    monkeypatch.setattr(blas, "gemm_batched", lambda a, b, c, *args: calls.append(c.shape))
    x = np.ones((300, blas.SMALL_SIDE), np.float32)
    blas.matmul(x, np.ones((blas.SMALL_SIDE, blas.SMALL_SIDE - 1), np.float32))   # one side under SMALL_SIDE
    blas.matmul(np.ones((2, 3, 64, 64), np.float32), np.ones((2, 3, 64, 64), np.float32))   # 2^18 < SMALL_PRODUCT
    assert calls == []
    blas.matmul(x, np.ones((blas.SMALL_SIDE, blas.SMALL_SIDE), np.float32))
    blas.matmul(np.ones((2, 3, 128, 64), np.float32), np.ones((2, 3, 64, 128), np.float32))   # 2^20
    assert calls == [(300, blas.SMALL_SIDE), (2, 3, 128, 128)]


@pytest.fixture
def every_product_to_mkl(monkeypatch):
    """Lift the small-product rules, so that odd small shapes reach MKL too."""
    monkeypatch.setattr(blas, "SMALL_SIDE", 1)
    monkeypatch.setattr(blas, "SMALL_PRODUCT", 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, d", [(7, 5), (197, 64)])
def test_attention_products_on_views_of_qkv(dtype, N, d, every_product_to_mkl):
    rng = np.random.default_rng(1)
    B, H = 2, 3
    qkv = rng.standard_normal((B, N, 3, H, d)).astype(dtype)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)                        # (B, H, N, d) each: views, as in mhsa_forward
    s = check(q, k, trans_b=True)                                 # q k^T: two leading axes whose strides do not merge
    check(s, v)
    check(s, v, trans_a=True)                                     # p^T dout
    check(s.reshape(B * H, N, N), v.reshape(B * H, N, d))         # one leading axis: a copy of v, then MKL's strided batch
    check(s[:1, :1], v[:1, :1])                                   # a stack of one
    check(s[:, 1], v[:, 2], trans_a=True)                         # one leading axis of views: the strided batch, transposed
    check(s[::-1, :1], v[:, :1])                                  # a leading axis stepping backwards: copied first


def test_stacks_of_one_with_any_leading_stride(every_product_to_mkl):
    a = np.random.default_rng(5).standard_normal((1, 40, 30)).astype(np.float32)
    b = np.random.default_rng(6).standard_normal((1, 30, 20)).astype(np.float32)
    check(a[::-1], b)                          # length 1, stride negative: NumPy calls it contiguous
    check(np.broadcast_to(a, (1, 40, 30)), b[::-1])
    interleaved = np.random.default_rng(7).standard_normal((40, 3, 30)).astype(np.float32).transpose(1, 0, 2)
    check(interleaved, np.stack([b[0]] * 3))   # (3, 40, 30) whose matrices interleave in memory


def test_what_mkl_cannot_hold_goes_to_numpy(monkeypatch, every_product_to_mkl):
    monkeypatch.setattr(blas, "_INT_MAX", 100)                     # as if 101 overflowed MKL's 32-bit integers
    calls = []
    real = blas.library().cblas_sgemm
    monkeypatch.setattr(blas.library(), "cblas_sgemm", lambda *args: calls.append(args) or real(*args))
    check(np.ones((60, 50), np.float32), np.ones((50, 40), np.float32))   # ld * m = 2,400 > 100: NumPy's
    assert not calls
    with pytest.raises(ValueError, match="32-bit"):
        blas.gemm_batched(np.ones((60, 50), np.float32), np.ones((50, 40), np.float32), np.empty((60, 40), np.float32))


def test_the_bits_do_not_depend_on_alignment(every_product_to_mkl):
    """Strict reproducibility (blas._load): each form of call gives the same bits at any offset of its arrays."""
    rng = np.random.default_rng(8)

    def moved(x, offset):                       # x's values at another address, `offset` elements further
        buf = np.empty(x.size + 16, x.dtype)
        y = buf[offset:offset + x.size].reshape(x.shape)
        y[...] = x
        return y
    for a, b in [(rng.standard_normal((257, 130)), rng.standard_normal((130, 129))),          # one GEMM
                 (rng.standard_normal((4, 65, 33)), rng.standard_normal((4, 33, 65))),        # strided batch
                 (rng.standard_normal((2, 3, 65, 33)), rng.standard_normal((2, 3, 33, 65)))]: # pointer batch
        a, b = a.astype(np.float32), b.astype(np.float32)
        first = blas.matmul(a, b)
        for offset in (1, 3, 7):
            assert np.array_equal(blas.matmul(moved(a, offset), moved(b, offset + 2)), first)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_batched_writes_into_a_strided_output_with_alpha(dtype):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 9, 6)).astype(dtype), rng.standard_normal((4, 11, 6)).astype(dtype)
    padded = np.full((4, 9, 16), 7.0, dtype)
    c = padded[:, :, :11]                                        # rows padded to 16 entries, as a leading dimension
    blas.gemm_batched(a, b, c, trans_b=True, alpha=0.25)
    assert rel(c, 0.25 * a @ b.swapaxes(-1, -2)) < TOL[dtype]
    assert np.all(padded[:, :, 11:] == 7.0)                       # nothing written past the rows


def test_what_mkl_does_not_take_goes_to_numpy(every_product_to_mkl):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4, 5))
    cases = [(a, rng.standard_normal((5, 2))),                      # a broadcast stack
             (a.astype(np.float32), rng.standard_normal((3, 5, 2))),   # mixed dtypes
             (np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2)),  # integers
             (np.zeros((0, 5)), np.ones((5, 2))), (np.ones((3, 0)), np.ones((0, 2)))]   # empty
    for x, y in cases:
        want = x @ y
        got = blas.matmul(x, y)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    with pytest.raises(ValueError):
        blas.matmul(np.ones((3, 4)), np.ones((5, 2)))            # NumPy's error for mismatched shapes


@pytest.fixture
def mkl_off():
    blas.use_mkl(False)
    yield
    blas.use_mkl(True)


def test_switching_mkl_off_in_process(mkl_off, every_product_to_mkl, monkeypatch):
    assert not blas.available() and blas.version() is None
    monkeypatch.setattr(blas, "gemm_batched", lambda *args: pytest.fail("MKL called while off"))
    x, y = np.ones((4, 3), np.float32), np.ones((3, 2), np.float32)
    assert np.array_equal(blas.matmul(x, y), x @ y)


def test_switching_mkl_back_on_after_use():
    x = np.ones((200, 200), np.float32)
    blas.matmul(x, x)                          # MKL has run: its settings can no longer change
    blas.use_mkl(False)
    blas.use_mkl(True)
    assert blas.available()


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_loss_and_gradients_with_and_without_mkl(dtype, monkeypatch):
    """A training step through every layer with MKL's products and with NumPy's: the same loss and
    gradients. 257 tokens of 64 features a head: the attention products are MKL's too."""
    from minivit.layers.loss import cross_entropy
    cfg = mv.ViTConfig.preset("test", image_size=32, patch_size=2, dim=128, heads=2, depth=1, mlp_dim=128)
    assert cfg.tokens_per_image ** 2 * (cfg.dim // cfg.heads) >= blas.SMALL_PRODUCT and cfg.dim >= blas.SMALL_SIDE
    params = mv.init_params(cfg, seed=0, dtype=dtype)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, cfg.in_channels, 32, 32)).astype(dtype)
    y = rng.integers(0, cfg.num_classes, 2)

    calls = []
    gemm = blas.gemm_batched
    monkeypatch.setattr(blas, "gemm_batched", lambda a, b, c, *args: calls.append(c.shape) or gemm(a, b, c, *args))

    def run():
        logits, cache = mv.forward(params, x, cfg, train=True, rng=np.random.default_rng(0))
        loss, dlogits = cross_entropy(logits, y, 0.1)
        return float(loss), mv.backward(dlogits, cache)
    l_on, g_on = run()
    n = cfg.tokens_per_image
    assert (2, cfg.heads, n, n) in calls and len(calls) >= 3 * 4 + 6   # attention's and the dense layers' products
    blas.use_mkl(False)
    try:
        calls.clear()
        l_off, g_off = run()
        assert not calls
    finally:
        blas.use_mkl(True)
    assert abs(l_on - l_off) <= TOL[dtype] * abs(l_off)
    for k in g_off:
        assert rel(g_on[k], g_off[k]) < (1e-4 if dtype == np.float32 else 1e-11), k


def test_the_environment_switch_and_the_version():
    assert blas.version().startswith("MKL 20")
    code = "from minivit.cpu import blas; print(blas.available())"
    env = dict(os.environ, MINIVIT_BLAS="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("vendor, setting, want", [("GenuineIntel", "", True), ("AuthenticAMD", "", False),
                                                   ("AuthenticAMD", "auto", False), ("AuthenticAMD", "mkl", True),
                                                   ("GenuineIntel", "numpy", False), (None, "", False)])
def test_the_blas_is_chosen_by_cpu_vendor_unless_forced(monkeypatch, vendor, setting, want):
    """By default MKL's products run on Intel CPUs only (measured faster there, slower on an AMD EPYC:
    docs/cpu_kernels.md); MINIVIT_BLAS=mkl or numpy forces either."""
    monkeypatch.setattr(blas, "_enabled", None)
    monkeypatch.setattr(blas, "cpu_vendor", lambda: vendor)
    monkeypatch.setenv("MINIVIT_BLAS", setting)
    assert blas.wanted() is want
    assert blas.available() is want          # the wheel is installed here, so wanted means used

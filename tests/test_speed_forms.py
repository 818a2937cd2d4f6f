"""The fast forms of the layers agree with the textbook lines they replace.

Each layer whose fast form departs from its formula shows the formula first, as a short reference
function beside it (gelu_reference, softmax_reference, attention_reference, layernorm_reference,
layernorm_backward_reference); here the two must agree in float64 to 1e-12. The float32 erf is
pinned against SciPy's, and the allocator tuning against page-fault counts.
"""
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.special import erf

import minivit as mv
from minivit import backend
from minivit.layers.activations import gelu_reference
from minivit.layers.attention import attention_reference, softmax_reference
from minivit.layers.erf import _AS_A, _AS_P, erfc_as, normal_cdf_as
from minivit.layers.norm import layernorm_backward_reference, layernorm_reference
from minivit.layers import cache_pieces as pieces
from minivit.layers.rowsums import dot_last, mean_last, sum_last, sum_rows
from helpers import rel_error


@pytest.fixture(autouse=True)
def numpy_lines():
    """These pin the NumPy fast forms to the textbook, so they run with the fused CPU kernels off
    (tests/test_cpu_kernels.py pins the kernels to these forms)."""
    before = backend.fused_on()
    backend.use_fused_kernels(False)
    yield
    backend.use_fused_kernels(before)

rng = np.random.default_rng(0)
TIGHT = 1e-12


def randn(*shape):
    return rng.standard_normal(shape)


def test_the_references_are_the_formulas():
    """The reference functions themselves, against the formulas written out once more by hand."""
    x = randn(3, 5, 8) * 2 + 1
    s = np.exp(x - x.max(axis=-1, keepdims=True))
    assert rel_error(softmax_reference(x), s / s.sum(axis=-1, keepdims=True)) < TIGHT
    assert rel_error(softmax_reference(x).sum(axis=-1), np.ones((3, 5))) < TIGHT
    y, d = gelu_reference(x)
    assert rel_error(y, x * 0.5 * (1 + erf(x / math.sqrt(2)))) < TIGHT
    h = 1e-6                                                   # the derivative is the formula's
    assert rel_error(d, (gelu_reference(x + h)[0] - gelu_reference(x - h)[0]) / (2 * h)) < 1e-8
    yt, dt = gelu_reference(x, "tanh")
    assert rel_error(dt, (gelu_reference(x + h, "tanh")[0] - gelu_reference(x - h, "tanh")[0]) / (2 * h)) < 1e-8
    assert np.abs(yt - y).max() < 1e-2                         # the tanh form approximates the exact one
    w, b = randn(8), randn(8)
    z = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    assert rel_error(layernorm_reference(x, w, b), z * w + b) < TIGHT
    q, k, v = randn(2, 4, 3), randn(2, 4, 3), randn(2, 4, 3)
    a = np.exp(q @ k.swapaxes(-1, -2) / math.sqrt(3))
    assert rel_error(attention_reference(q, k, v), (a / a.sum(-1, keepdims=True)) @ v) < TIGHT


@pytest.fixture(params=[None, 8, 40], ids=["whole", "pieces-of-8", "pieces-of-40"])
def piece_floats(request, monkeypatch):
    """Runs a test on whole arrays and again cut into small pieces (minivit/layers/cache_pieces.py), one
    row per piece or several with a shorter last piece: the results must not change."""
    if request.param is not None:
        monkeypatch.setattr(pieces, "PIECE_FLOATS", request.param)
    return request.param


def test_in_pieces_covers_every_row_once(monkeypatch):
    monkeypatch.setattr(pieces, "PIECE_FLOATS", 12)
    x = randn(5, 3, 4)                                   # 15 rows of 4: pieces of 3 rows
    seen = []

    def double(a, out):
        seen.append(a.shape[0])
        np.multiply(a, 2.0, out=out)
    out = np.full_like(x, np.nan)
    assert pieces.in_pieces(double, [x], [out])[0] is out
    assert seen == [3] * 5 and np.array_equal(out, 2 * x)
    seen.clear()
    monkeypatch.setattr(pieces, "PIECE_FLOATS", 28)      # 7 rows per piece: 7, 7 and the last 1
    pieces.in_pieces(double, [x], [out])
    assert seen == [7, 7, 1] and np.array_equal(out, 2 * x)
    seen.clear()
    monkeypatch.setattr(pieces, "PIECE_FLOATS", 30)      # 60 floats or fewer: one call on the whole
    pieces.in_pieces(double, [x], [out])
    assert seen == [5]


def test_row_reductions_are_sums():
    x = randn(3, 5, 7)
    assert rel_error(sum_last(x), x.sum(axis=-1, keepdims=True)) < TIGHT
    assert rel_error(mean_last(x), x.mean(axis=-1, keepdims=True)) < TIGHT
    assert rel_error(sum_last(x, 0.25), 0.25 * x.sum(axis=-1, keepdims=True)) < TIGHT
    assert mean_last(x).shape == (3, 5, 1)
    assert rel_error(sum_rows(x), x.sum(axis=(0, 1))) < TIGHT
    assert sum_rows(x).shape == (7,)
    v = randn(7)
    assert rel_error(dot_last(x, v), (x * v).sum(axis=-1, keepdims=True)) < TIGHT


def test_layernorm_matches_textbook():
    x, w, b, dy = randn(4, 6, 16) * 3 + 2, randn(16), randn(16), randn(4, 6, 16)
    eps = 1e-6
    y, cache = mv.layernorm_forward(x, w, b, eps)
    assert rel_error(y, layernorm_reference(x, w, b, eps)) < TIGHT
    y_only, none = mv.layernorm_forward(x, w, b, eps, keep_cache=False)  # inference: y over xhat
    assert none is None
    np.testing.assert_array_equal(y_only, y)
    for got, want in zip(mv.layernorm_backward(dy, cache), layernorm_backward_reference(dy, x, w, eps)):
        assert rel_error(got, want) < TIGHT


def test_softmax_in_place_matches_textbook_and_overwrites(piece_floats):
    s = randn(3, 4, 9) * 5
    ref = softmax_reference(s)
    assert rel_error(mv.softmax(s), ref) < TIGHT
    buf = s.copy()
    out = mv.softmax(buf, out=buf)
    assert out is buf and rel_error(buf, ref) < TIGHT
    assert rel_error(mv.softmax(s, axis=1), np.exp(s - s.max(1, keepdims=True)) /
                     np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) < TIGHT


def test_softmax_shift_over_wide_pieces_matches_textbook(piece_floats):
    """While a piece's logits span less than SHARED_SHIFT_SPAN one shift serves all its rows;
    here rows sit 500 apart, so one shift for them all would underflow whole rows to 0/0, and
    one row alone spans 400. Both must come out as the textbook's row-by-row softmax."""
    from minivit.layers.attention import SHARED_SHIFT_SPAN
    s = randn(6, 9) * 3
    s[::2] += 500.0                                      # rows far above their neighbours
    s[1, 0] = -400.0                                     # a row wider than the span on its own
    assert np.ptp(s[0:2]) > SHARED_SHIFT_SPAN
    ref = softmax_reference(s)
    got = mv.softmax(s)
    assert np.isfinite(got).all() and rel_error(got, ref) < TIGHT
    s32 = s.astype(np.float32)
    got32 = mv.softmax(s32)
    assert got32.dtype == np.float32 and np.isfinite(got32).all()
    assert np.abs(got32 - softmax_reference(s32.astype(np.float64))).max() < 1e-6


@pytest.mark.parametrize("p_drop", [0.0, 0.3])
def test_attention_matches_textbook(p_drop, piece_floats):
    """Scale on q, in-place softmax and the rowsum(dout * out) identity, against the chain of
    docs/derivations/attention.md written out naively."""
    B, H, N, d = 2, 3, 7, 5
    q, k, v, dout = randn(B, H, N, d), randn(B, H, N, d), randn(B, H, N, d), randn(B, H, N, d)
    out, cache = mv.attention_forward(q, k, v, p_drop=p_drop, rng=np.random.default_rng(1), train=True)
    A = softmax_reference(q @ k.swapaxes(-1, -2) / math.sqrt(d))
    mask = cache.mask if p_drop else np.ones_like(A)  # the mask forward drew
    assert rel_error(cache.probs, A) < TIGHT
    assert rel_error(out, (A * mask) @ v) < TIGHT
    if not p_drop:
        assert rel_error(out, attention_reference(q, k, v)) < TIGHT
    dq, dk, dv = mv.attention_backward(dout, cache)
    dA = (dout @ v.swapaxes(-1, -2)) * mask
    dS = mv.softmax_backward(dA, A)          # the textbook softmax backward, sum over N x N
    assert rel_error(dv, (A * mask).swapaxes(-1, -2) @ dout) < TIGHT
    assert rel_error(dq, dS @ k / math.sqrt(d)) < TIGHT
    assert rel_error(dk, dS.swapaxes(-1, -2) @ q / math.sqrt(d)) < TIGHT


@pytest.mark.parametrize("approximate", ["exact", "tanh"])
def test_gelu_cached_derivative_matches_textbook(approximate, piece_floats):
    x, dy = randn(10, 5) * 3, randn(10, 5)
    y, cache = mv.gelu_forward(x, approximate)
    ref_y, ref_d = gelu_reference(x, approximate)
    assert rel_error(y, ref_y) < TIGHT
    assert rel_error(mv.gelu_backward(dy, cache), dy * ref_d) < TIGHT
    y_only, none = mv.gelu_forward(x, approximate, keep_cache=False)  # inference: no derivative
    assert none is None and rel_error(y_only, ref_y) < TIGHT       # exact: relu(x) - |x| Phi(-|x|)


@pytest.mark.parametrize("approximate", ["exact", "tanh"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("keep_cache", [True, False], ids=["train", "eval"])
def test_gelu_written_over_its_input_gives_the_same_numbers(approximate, dtype, keep_cache, piece_floats):
    """The MLP lets GELU write y over fc1's output (out=x): every form must finish reading x
    before it writes y, piece by piece."""
    x = (randn(10, 5) * 3).astype(dtype)
    y, cache = mv.gelu_forward(x, approximate, keep_cache)
    x_in = x.copy()
    y_in, cache_in = mv.gelu_forward(x_in, approximate, keep_cache, out=x_in)
    assert y_in is x_in
    np.testing.assert_array_equal(y_in, y)
    if keep_cache:
        np.testing.assert_array_equal(cache_in, cache)  # the derivative, from x before it was overwritten


@pytest.mark.parametrize("kh,kw,stride,pad", [(3, 3, 1, 1), (3, 3, 2, 1), (2, 3, 1, 0), (4, 4, 4, 0),
                                             (5, 5, 2, 2), (2, 2, 3, 1)])
def test_conv_windows_match_im2col_and_col2im(kh, kw, stride, pad):
    """windows() is im2col with each image's rows as columns, windows_adjoint() is col2im, also
    where windows overlap, where they skip pixels (stride 3 > kernel 2) and over the padding."""
    from minivit.layers.conv import windows, windows_adjoint
    x = randn(3, 2, 7, 8)
    cols = windows(x, kh, kw, stride, pad)                       # (B, C kh kw, Ho Wo)
    rows = mv.im2col(x, kh, kw, stride, pad)                     # (B Ho Wo, C kh kw)
    np.testing.assert_array_equal(cols.transpose(0, 2, 1).reshape(rows.shape), rows)
    c = randn(*cols.shape)
    want = mv.col2im(c.transpose(0, 2, 1).reshape(rows.shape), x.shape, kh, kw, stride, pad)
    assert rel_error(windows_adjoint(c, x.shape, kh, kw, stride, pad), want) < TIGHT


def test_conv2d_matches_the_im2col_product():
    """conv2d_forward's per-image products give im2col(x) @ w.reshape(F, -1).T + b, laid out (B, F, Ho, Wo)."""
    x, w, b = randn(2, 3, 9, 8), randn(5, 3, 3, 3), randn(5)
    y, _ = mv.conv2d_forward(x, w, b, stride=2, pad=1)
    want = mv.im2col(x, 3, 3, 2, 1) @ w.reshape(5, -1).T + b     # (B Ho Wo, F)
    assert rel_error(y, want.reshape(2, 5, 4, 5).transpose(0, 3, 1, 2)) < TIGHT


@pytest.mark.parametrize("kappa, scale", [(1.0, 1.0), (1 / math.sqrt(2), 0.5), (math.sqrt(2), 1.0), (0.3, 2.5)])
def test_erfc_led_by_one_matches_the_textbook_order(kappa, scale):
    """erfc_as rescales A&S 7.1.26's polynomial to lead with 1; the textbook order, term by term."""
    v = np.abs(randn(20_000)) * 4
    v[:3] = 0.0, 1e-9, 50.0
    keep = v.copy()
    u = kappa * v
    t = 1 / (1 + _AS_P * u)
    want = scale * sum(a * t ** i for i, a in enumerate(_AS_A, start=1)) * np.exp(-u * u)
    got = erfc_as(v, kappa, e=np.exp(-u * u), scale=scale)
    assert np.array_equal(v, keep)                                   # v is read, not overwritten
    assert rel_error(got, want) < TIGHT
    assert (np.abs(got - want) <= TIGHT * np.abs(want)).all()       # each value, the small tails too


def test_float32_erf_error_against_scipy():
    """A&S 7.1.26 bounds |erf error| by 1.5e-7, so Phi = (1 + erf)/2 is off by at most 7.5e-8
    when the formula is evaluated in float64. In float32, about ten roundings of numbers below
    1 (at most 3e-8 each) come on top: 7.5e-8 + 3e-7 < 4e-7."""
    xs = np.linspace(-12, 12, 480_001)
    ref = 0.5 * (1 + erf(xs / math.sqrt(2)))
    for dtype, bound in ((np.float64, 7.5e-8), (np.float32, 4e-7)):
        x = xs.astype(dtype)
        exact = 0.5 * (1 + erf(x.astype(np.float64) / math.sqrt(2)))
        got = normal_cdf_as(x, np.exp(-0.5 * x * x))
        assert got.dtype == dtype
        assert np.abs(got - exact).max() <= bound, (dtype, np.abs(got - exact).max())
    assert np.abs(normal_cdf_as(xs, np.exp(-0.5 * xs * xs)) - ref).max() > 1e-8  # an approximation, not SciPy


def test_gelu_float32_uses_the_hand_written_erf_and_stays_close():
    x = (randn(1000) * 4).astype(np.float32)
    y, d = mv.gelu_forward(x)
    assert y.dtype == d.dtype == np.float32
    y64, d64 = mv.gelu_forward(x.astype(np.float64))
    assert np.abs(y - y64).max() < 4e-7 * 16 + 1e-6  # |x| <= ~16: x times the Phi error, plus rounding
    assert np.abs(d - d64).max() < 1e-5


def test_gelu_float32_inference_form_error_against_scipy():
    """Inference's relu(x) - |x| Phi(-|x|): Phi(-|x|) = erfc / 2 is off by at most 7.5e-8 (A&S)
    plus the float32 roundings of the polynomial (about ten, each at most 3e-8 of numbers below
    1), so y is off by |x| (7.5e-8 + 3e-7) plus the rounding of y itself (6e-8 |y|)."""
    xs = np.linspace(-12, 12, 480_001)
    x = xs.astype(np.float32)
    x64 = x.astype(np.float64)
    exact = x64 * 0.5 * (1 + erf(x64 / math.sqrt(2)))
    y, none = mv.gelu_forward(x, keep_cache=False)
    assert none is None and y.dtype == np.float32
    err = np.abs(y - exact)
    assert (err <= np.abs(x64) * 3.75e-7 + 6e-8 * np.abs(exact) + 1e-12).all(), err.max()
    assert err.max() > 0                                          # float32 and A&S: not exact
    assert (y[x > 0] >= 0).all() and (y[x < 0] <= 0).all()      # the sign of x Phi(x), kept


def test_keep_freed_memory_stops_page_faults():
    """Freeing and re-allocating an 8 MB array faults in every page again under glibc's
    defaults (mmap/munmap per array); after keep_freed_memory() the heap keeps and reuses it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc only")
    code = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from minivit.train.allocator import keep_freed_memory
        if sys.argv[1] == "tuned":
            assert keep_freed_memory() and keep_freed_memory()  # idempotent
        np.ones(2 ** 21, np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(40):
            a = np.ones(2 ** 21, np.float32)  # 8 MB, written in full
            del a
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], check=True, capture_output=True,
                                       text=True).stdout) for mode in ("default", "tuned")}
    # At least the four 2 MiB pages of each array (NumPy asks for huge pages for large arrays;
    # with 4 KiB pages it is 2048 per array).
    assert faults["default"] >= 40 * 4, faults
    assert faults["tuned"] < faults["default"] / 10, faults


def test_mhsa_cache_keeps_one_copy_of_the_attention_output():
    """The attention output is needed in backward (the rowsum identity) and, heads concatenated,
    as the projection's input; the cache holds it once, as a view of the projection's input.
    q, k and v are kept as views of the qkv projection's output, q without the scale."""
    B, N, H, d = 2, 5, 3, 4
    D = H * d
    x, wq, bq, wp, bp = randn(B, N, D), randn(D, 3 * D), randn(3 * D), randn(D, D), randn(D)
    _, (c_qkv, c_att, c_proj, heads, c_rel) = mv.mhsa_forward(x, wq, bq, wp, bp, H)
    out, ctx = c_att[6], c_proj[0]                      # (B, H, N, d) and (B, N, D)
    assert np.shares_memory(out, ctx)
    np.testing.assert_array_equal(out, ctx.reshape(B, N, H, d).transpose(0, 2, 1, 3))
    q, k, v, attn = c_att[:4]
    assert rel_error(out, attn @ v) < TIGHT             # still the attention output
    qkv = (x @ wq + bq).reshape(B, N, 3, H, d).transpose(2, 0, 3, 1, 4)
    for a, want in zip((q, k, v), qkv):                 # q unscaled: views of the projection's output
        assert not a.flags.owndata and rel_error(a, want) < TIGHT

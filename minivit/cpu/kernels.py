"""Fused CPU kernels for the NumPy backend, written in Python and compiled by numba.

NumPy runs one line at a time: LayerNorm written as NumPy lines is seven passes over a (tokens,
features) array, GELU with its derivative about ten, the attention softmax and its backward
five more over (heads, N, N). Each pass reads and writes the whole array through the memory
hierarchy, and a small ViT's step spends more time in these passes than in its matrix products
(docs/results.md). Each kernel here is one such layer as one loop over rows: a row (a token's D
features, an attention row's N keys) is read once, kept in L1, and written once.

The layer named beside each kernel (minivit/layers/) stays the definition, the textbook form;
tests/test_cpu_kernels.py compares every kernel with it in float32 and float64. The names and signatures
are the kernel contract's (minivit/contract.py). The layers call these automatically when their inputs
are NumPy arrays and numba is installed (`fused` in minivit/backend.py); MINIVIT_FUSED=0 turns them off,
as it does the CUDA kernels (minivit/gpu/kernels.py).

How they are compiled (docs/cpu_kernels.md):
- nogil: the trainer's threads run their shards of the batch at the same time (minivit/train/engine.py);
  the kernels themselves are serial loops, one core each.
- cache: the machine code is kept on disk beside this file (or in numba's user cache when
  that folder is read-only), so only the first call on a machine compiles. Where numba finds no
  writable place at all (a read-only install and home), they compile in memory on every run
  instead, and minivit says so once (_njit).
- fastmath, but only reassociation, contraction, reciprocals and signed zeros: LLVM may then
  vectorise the row sums. No 'nnan' or 'ninf': a NaN must still reach the trainer's guard.
"""
import math
import sys
from functools import lru_cache

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from .blas import matmul
from ..contract import GELU_TANH_C, SQRT_2_OVER_PI, AttentionCache

JIT = dict(nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz"})
_UNCACHED = []   # set once numba has found no writable cache folder


def _njit(**options):
    """numba.njit with its machine code cached on disk. numba looks for a writable folder (NUMBA_CACHE_DIR, this
    package's __pycache__, the user's cache) when a kernel is decorated, and raises if it finds none; the
    kernels then compile in memory on every run, which costs time on each start but nothing else."""
    def wrap(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError as e:
            if "cannot cache" not in str(e):
                raise
            if not _UNCACHED:
                _UNCACHED.append(str(e))
                print("minivit: numba finds no writable folder for its cache (this package's folder, the home cache "
                      "and NUMBA_CACHE_DIR are read-only or missing); the CPU kernels compile in memory on each run. "
                      "Set NUMBA_CACHE_DIR to a writable folder to keep them", file=sys.stderr)
            return numba.njit(cache=False, **options)(fn)
    return wrap

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Abramowitz & Stegun, Handbook of Mathematical Functions (1964), eq. 7.1.26: erfc(u) = (a1 t + ... + a5 t^5)
# exp(-u^2), t = 1 / (1 + p u), u >= 0, absolute error at most 1.5e-7: one to two float32 rounding steps near 1.
# SciPy's erf works in float64, too slow for a float32 step; the float32 GELU uses this, float64 libm's erf.
_AS_P = 0.3275911
_A1, _A2, _A3, _A4, _A5 = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429


# ----------------------------------------------------------------------------------------------- exp

# exp(x) = 2^n e^r, n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (Cody & Waite's reduction, ln 2
# split in two so that n ln 2 is exact to about 1e-19), e^r by its Taylor series to r^12 (the first
# term left out is below 2e-16 of the sum), 2^n by writing n + 1023 into a float64's exponent bits.
# libm's exp is a function call that the compiler cannot spread over the vector lanes; this is
# arithmetic, so a loop of it runs 8 lanes at a time (tests/test_cpu_kernels.py: within 1e-15 of NumPy's).
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(13))


@intrinsic
def _float64_from_bits(typingctx, bits):
    """The float64 whose IEEE-754 bits are the int64 `bits`: a reinterpretation, not a conversion."""
    if not isinstance(bits, types.Integer) or bits.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(bits), codegen


@_njit(nogil=True, error_model="numpy", fastmath={"contract"})   # no reassociation: the reduction's order matters
def vector_exp(x):
    if x < -708.0:                                # below, 2^n would leave the normal range; NaN passes
        x = -708.0
    if x > 709.0:
        x = 709.0
    n = math.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = _TAYLOR[12]
    for k in range(11, -1, -1):                   # Horner, unrolled by the compiler
        p = p * r + _TAYLOR[k]
    return p * _float64_from_bits((np.int64(n) + 1023) << 52)


# The same for float32, in float32 arithmetic on 16 lanes: n + 127 into a float32's exponent bits, e^r to
# r^7 (the first term left out is below 6e-9 of the sum); within 1e-7 of exp in float64 over [-87, 88].
_LOG2E_F = np.float32(_LOG2E)
_LN2_HI_F, _LN2_LO_F = np.float32(0.693359375), np.float32(-2.12194440e-4)   # Cephes' split of ln 2
_TAYLOR_F = tuple(np.float32(c) for c in _TAYLOR[:8])
_LO_F, _HI_F, _HALF_F = np.float32(-87.0), np.float32(88.0), np.float32(0.5)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bits are the low 32 of the integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, context.get_value_type(types.int32))
        return builder.bitcast(v, context.get_value_type(types.float32))
    return types.float32(bits), codegen


@_njit(nogil=True, error_model="numpy", fastmath={"contract"})
def vector_expf(x):
    if x < _LO_F:
        x = _LO_F
    if x > _HI_F:
        x = _HI_F
    n = np.floor(x * _LOG2E_F + _HALF_F)
    r = (x - n * _LN2_HI_F) - n * _LN2_LO_F
    p = _TAYLOR_F[7]
    for k in range(6, -1, -1):
        p = p * r + _TAYLOR_F[k]
    return p * _float32_from_bits((np.int32(n) + 127) << 23)


def exp_of(x):
    """exp(x) in x's own precision: vector_expf for a float32, vector_exp for a float64 (inside kernels)."""
    return math.exp(x)


@overload(exp_of)
def _exp_of(x):
    return (lambda x: vector_expf(x)) if x == types.float32 else (lambda x: vector_exp(x))


# The largest of a row's n entries times `scale` (> 0). Compiled with 'nnan' as well, so that it runs on
# vector lanes: a NaN in the row may then be missed here, but the exp pass after it turns it to NaN anyway.
@_njit(nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "arcp", "nsz", "nnan", "ninf"})
def row_max(x, i, n, scale):
    top = scale * x[i, 0]
    for j in range(1, n):
        v = scale * x[i, j]
        top = v if v > top else top
    return top


def _rows(a):
    """a (..., n) as a C-contiguous (rows, n) array (a view when a is contiguous)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def _output(out, *inputs, in_place=False):
    """`out` if the kernel can write into it, else a new array shaped as inputs[0].

    in_place: the kernel may write over inputs[0] itself (out is x), because it gathers each row in a
    buffer before writing it. Otherwise a new array even where the layer offers an input to overwrite:
    a loop reading and writing the same memory through two arguments finds them overlapping and
    falls back from vector lanes to one element at a time, several times slower than an allocation."""
    x = inputs[0]
    if out is None or not out.flags.c_contiguous or out.shape != x.shape or out.dtype != x.dtype:
        return np.empty(x.shape, x.dtype)
    same = in_place and out.ctypes.data == x.ctypes.data and out.strides == x.strides
    if not same and any(np.may_share_memory(out, a) for a in inputs):
        return np.empty(x.shape, x.dtype)
    return out


# ----------------------------------------------------------------------------------------------- LayerNorm

# minivit.layers.norm.layernorm_forward: y = xhat w + b, xhat = (x - mean) rstd, rstd = 1 / sqrt(var + eps)
@_njit(**JIT)
def layernorm_forward_kernel(x, w, b, eps, y, xhat, rstd):
    rows, D = x.shape
    for i in range(rows):
        s = 0.0
        for j in range(D):
            s += x[i, j]
        mean = s / D
        ss = 0.0
        for j in range(D):                        # centred second pass, as NumPy's
            c = x[i, j] - mean
            ss += c * c
        r = 1.0 / math.sqrt(ss / D + eps)
        for j in range(D):
            h = (x[i, j] - mean) * r
            xhat[i, j] = h
            y[i, j] = h * w[j] + b[j]
        rstd[i] = r


def layernorm_forward(x, w, b, eps):
    """As minivit.layers.norm.layernorm_forward: -> y, (xhat, rstd (..., 1), w) (the CUDA kernel's signature)."""
    x2 = _rows(x)
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)
    layernorm_forward_kernel(x2, w.astype(x.dtype, copy=False), b.astype(x.dtype, copy=False), eps, y, xhat, rstd)
    shape = x.shape
    return y.reshape(shape), (xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), w)


# minivit.layers.norm.layernorm_backward: g = dy w, dx = rstd (g - mean(g) - xhat mean(g xhat)),
# dw = sum over rows of dy xhat, db = sum over rows of dy
@_njit(**JIT)
def layernorm_backward_kernel(dy, xhat, rstd, w, dx, dw, db):
    rows, D = dy.shape
    dw_sum = np.zeros(D)                          # float64 column sums
    db_sum = np.zeros(D)
    for i in range(rows):
        s1 = 0.0
        s2 = 0.0
        for j in range(D):
            g = dy[i, j] * w[j]
            s1 += g
            s2 += g * xhat[i, j]
            dw_sum[j] += dy[i, j] * xhat[i, j]
            db_sum[j] += dy[i, j]
        m1 = s1 / D
        m2 = s2 / D
        r = rstd[i]
        for j in range(D):
            dx[i, j] = (dy[i, j] * w[j] - m1 - xhat[i, j] * m2) * r
    for j in range(D):
        dw[j] = dw_sum[j]
        db[j] = db_sum[j]


def layernorm_backward(dy, cache):
    """As minivit.layers.norm.layernorm_backward: -> dx, dw, db."""
    xhat, rstd, w = cache
    dy2, xhat2 = _rows(dy), _rows(xhat)
    D = dy2.shape[1]
    dx = np.empty_like(dy2)
    dw, db = np.empty(D, dtype=dy.dtype), np.empty(D, dtype=dy.dtype)
    layernorm_backward_kernel(dy2, xhat2, rstd.reshape(-1), w.astype(dy.dtype, copy=False), dx, dw, db)
    return dx.reshape(dy.shape), dw, db


# ----------------------------------------------------------------------------------------------- GELU

# minivit.layers.activations.gelu_forward (exact), over h = x + b: y = h Phi(h),
# y' = Phi(h) + h phi(h), phi(h) = exp(-h^2 / 2) / sqrt(2 pi), Phi(h) = (1 + erf(h / sqrt 2)) / 2.
# Phi by A&S 7.1.26 (float32's precision): Phi(h) = 1 - q for h >= 0 and q for h < 0, q = erfc(|h| / sqrt 2) / 2.
# In float32 arithmetic throughout (16 lanes, vector_expf). Returns Phi(h) and exp(-h^2 / 2).
_F32 = np.float32
_AS_PK_F = _F32(_AS_P * _INV_SQRT_2)
_A1_F, _A2_F, _A3_F, _A4_F, _A5_F = (_F32(a) for a in (_A1, _A2, _A3, _A4, _A5))
_ONE_F, _ZERO_F, _INV_SQRT_2PI_F = _F32(1.0), _F32(0.0), _F32(_INV_SQRT_2PI)


@_njit(**JIT)
def normal_cdf_as_f32(h):
    e = vector_expf(-_HALF_F * h * h)
    t = _ONE_F / (_ONE_F + _AS_PK_F * abs(h))
    q = _HALF_F * t * (_A1_F + t * (_A2_F + t * (_A3_F + t * (_A4_F + t * _A5_F)))) * e
    return (_ONE_F - q if h >= _ZERO_F else q), e


# The loop over j is written twice, with the derivative (training) and without (inference): one loop
# with the choice inside it is not vectorised (measured: 4 times slower without the derivative).
@_njit(**JIT)
def gelu_exact_kernel(x, b, y, dydx):
    rows, H = x.shape
    row = np.empty(H, y.dtype)                    # y's row, written after x's row is read: y may be x
    for i in range(rows):
        if dydx.shape[0] > 0:
            for j in range(H):
                h = x[i, j] + b[j]
                phi, e = normal_cdf_as_f32(h)
                dydx[i, j] = phi + h * e * _INV_SQRT_2PI_F
                row[j] = h * phi
        else:
            for j in range(H):
                h = x[i, j] + b[j]
                phi, e = normal_cdf_as_f32(h)
                row[j] = h * phi
        for j in range(H):
            y[i, j] = row[j]


# The same in float64, with libm's erf and exp (one call each per element: a float64 model is for checking)
@_njit(**JIT)
def gelu_exact_float64_kernel(x, b, y, dydx):
    rows, H = x.shape
    keep = dydx.shape[0] > 0
    for i in range(rows):
        for j in range(H):
            h = x[i, j] + b[j]
            phi = 0.5 * (1.0 + math.erf(h * _INV_SQRT_2))
            if keep:
                dydx[i, j] = phi + h * math.exp(-0.5 * h * h) * _INV_SQRT_2PI
            y[i, j] = h * phi


# The tanh form: y = h/2 (1 + tanh u), u = sqrt(2/pi) (h + 0.044715 h^3),
# y' = (1 + tanh u)/2 + h/2 (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 h^2).
# 1 + tanh u = 2 / (1 + e^-2u): no cancellation where tanh u is near -1, and 1 - tanh^2 u = (1 + t)(1 - t).
# In x's precision: c holds (sqrt(2/pi), 0.044715, 1/2, 1, 2, 3) in x's dtype.
@_njit(**JIT)
def gelu_tanh_kernel(x, b, y, dydx, c):
    rows, H = x.shape
    k, g, half, one, two, three = c[0], c[1], c[2], c[3], c[4], c[5]
    row = np.empty(H, y.dtype)
    for i in range(rows):
        if dydx.shape[0] > 0:
            for j in range(H):
                h = x[i, j] + b[j]
                one_plus_t = two / (one + exp_of(-two * k * (h + g * h * h * h)))
                du = k * (one + three * g * h * h)
                dydx[i, j] = half * one_plus_t + half * h * one_plus_t * (two - one_plus_t) * du
                row[j] = half * h * one_plus_t
        else:
            for j in range(H):
                h = x[i, j] + b[j]
                one_plus_t = two / (one + exp_of(-two * k * (h + g * h * h * h)))
                row[j] = half * h * one_plus_t
        for j in range(H):
            y[i, j] = row[j]


def gelu_forward(x, approximate, keep_cache=True, out=None, bias=None):
    """As minivit.layers.activations.gelu_forward: GELU(x + bias) and, with keep_cache, its derivative there
    -> y, y' (or y, None). x (..., H), bias (H,) or None. out: the array y is written into (may be x). One
    pass for the bias add of the MLP's first layer and its GELU (minivit/models/block.py)."""
    x2 = _rows(x)
    H = x2.shape[1]
    b = np.zeros(H, x.dtype) if bias is None else bias.astype(x.dtype, copy=False)
    y = _output(out, x, in_place=True).reshape(-1, H)
    dydx = np.empty_like(x2) if keep_cache else np.empty((0, H), x.dtype)
    if approximate == "exact":
        (gelu_exact_kernel if x.dtype == np.float32 else gelu_exact_float64_kernel)(x2, b, y, dydx)
    else:
        c = np.array([SQRT_2_OVER_PI, GELU_TANH_C, 0.5, 1.0, 2.0, 3.0], dtype=x.dtype)
        gelu_tanh_kernel(x2, b, y, dydx, c)
    return y.reshape(x.shape), (dydx.reshape(x.shape) if keep_cache else None)


# ----------------------------------------------------------------------------------------------- softmax

# minivit.layers.attention.softmax of scale * x: out = exp(scale x - max) / sum(exp(scale x - max)), per row.
# Any per-row constant cancels, so one shift may serve every row: `shift`, the largest of all the scaled
# logits (from NumPy's vectorised max), used where `shared`. No exp then overflows; a row whose own
# maximum lies far below the shift would see its exponentials underflow, which shows as a row sum
# below e^-60 (SMALLEST_SUM): that row alone is done again with its own maximum (row_max). Above that
# sum, the exponentials that vector_expf clamps to e^-87 (its argument clamped at -87) move a row of n
# entries by less than n e^-27 of itself (4e-10 for vit-ti16's 197).
# In x's precision: scale, shift and the floor come in x's dtype.
@_njit(**JIT)
def softmax_kernel(x, out, scale, shift, shared, floor):
    rows, n = x.shape
    row = np.empty(n, x.dtype)                    # the row's exponentials: out may be x
    for i in range(rows):
        top = shift if shared else row_max(x, i, n, scale)
        s = scale - scale                         # 0 in x's dtype: the whole loop stays in float32 for float32
        for j in range(n):
            e = exp_of(scale * x[i, j] - top)
            row[j] = e
            s += e
        if shared and not s >= floor:             # underflow (or NaN): this row with its own maximum
            top = row_max(x, i, n, scale)
            s = scale - scale
            for j in range(n):
                e = exp_of(scale * x[i, j] - top)
                row[j] = e
                s += e
        r = (scale / scale) / s
        for j in range(n):
            out[i, j] = row[j] * r


SMALLEST_SUM = math.exp(-60.0)   # e^-60: far above float32's underflow (e^-87), far below a row's sum of 1


def softmax(x, out=None, scale=1.0):
    """As minivit.layers.attention.softmax(scale * x) over the last axis; out may be x."""
    x2 = _rows(x)
    out = _output(out, x, in_place=True)
    if x2.size:
        t = x.dtype.type
        top = (x2.max() if scale >= 0 else x2.min()) * scale   # the largest scaled logit, by NumPy's vectorised reduction
        shared = bool(np.isfinite(top))                       # else (NaN, inf) each row's own maximum
        softmax_kernel(x2, out.reshape(x2.shape), t(scale), t(top if shared else 0.0), shared, t(SMALLEST_SUM))
    return out


# scale * minivit.layers.attention.softmax_backward: ds = scale p (dp - rowsum(dp p)), per row
@_njit(**JIT)
def softmax_backward_kernel(dp, p, out, scale):
    rows, n = p.shape
    for i in range(rows):
        dot = 0.0
        for j in range(n):
            dot += dp[i, j] * p[i, j]
        for j in range(n):
            out[i, j] = scale * p[i, j] * (dp[i, j] - dot)


def softmax_backward(dp, p, out=None, scale=1.0):
    """scale * minivit.layers.attention.softmax_backward(dp, p) over the last axis, into `out` unless it overlaps (_output)."""
    dp2, p2 = _rows(dp), _rows(p)
    out = _output(out, dp, p)
    if dp2.size:
        softmax_backward_kernel(dp2, p2, out.reshape(dp2.shape), scale)
    return out


def attention_forward(q, k, v, scale):
    """As minivit.layers.attention.attention_forward without dropout or bias: q, k, v (..., N, d) -> out, cache
    (the layer's AttentionCache, minivit/contract.py).

    The logits q k^T are left unscaled, and the softmax kernel applies the scale as it reads them:
    the NumPy path's pass scaling q is saved. The products are MKL's where it is installed (blas.py)."""
    p = matmul(q, k, trans_b=True)                    # (..., N, N) logits / scale:  q @ k^T
    p = softmax(p, out=p, scale=scale)                # probabilities of the logits q k^T scale, in place
    out = matmul(p, v)                                # (..., N, d)
    return out, AttentionCache(q, k, v, p, p, None, out, scale)


def attention_backward(dout, cache):
    """-> dq, dk, dv (..., N, d). The scale enters the softmax gradient, so dq and dk need no pass of their own."""
    q, k, v, p, scale = cache.q, cache.k, cache.v, cache.probs, cache.scale
    dv = matmul(p, dout, trans_a=True)                # (..., N, d):  p^T @ dout
    ds = softmax_backward(matmul(dout, v, trans_b=True), p, scale=scale)   # (..., N, N): scale p (dp - rowsum(dp p))
    return matmul(ds, k), matmul(ds, q, trans_a=True), dv   # ds @ k, ds^T @ q


# ----------------------------------------------------------------------------------------------- dense

# minivit.layers.linear: y = x W + b; dx = dy W^T, dW = x^T dy, db = sum over rows of dy.
# The same lines, with the products by MKL where it is installed (blas.py), else NumPy's `@`.
def linear_forward(x, w, b):
    """As minivit.layers.linear.linear_forward (b may be None)."""
    y = matmul(x.reshape(-1, x.shape[-1]), w)         # (M, Dout)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[1]), (x, w)


def linear_backward(dy, cache):
    """As minivit.layers.linear.linear_backward: -> dx, dw, db."""
    x, w = cache
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    db = np.ones(dy2.shape[0], dtype=dy.dtype) @ dy2  # the column sums as one product, which BLAS runs over all rows at once
    return matmul(dy2, w, trans_b=True).reshape(x.shape), matmul(x2, dy2, trans_a=True), db


# ----------------------------------------------------------------------------------------------- convolution

# minivit.layers.conv's windows: each image's im2col rows as columns, copied by one gather through a table of
# pixel indices instead of im2col's kh x kw strided slices; and col2im's sums by one gather through the
# inverse table (docs/derivations/conv.md). The convolution's products stay the layer's.
def _conv_out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


@lru_cache(maxsize=32)
def _window_tables(C, H, W, kh, kw, stride, pad):
    """The index tables of conv_windows() and conv_windows_adjoint() for one image shape.

    idx (C*kh*kw, Ho*Wo): entry (c u v, i j) is the flat position, in the padded (C, H+2p, W+2p)
    image, of the pixel that im2col copies into row (i, j), column (c, u, v).
    inv (C*H*W, m): for every pixel of the unpadded image, the flat positions in idx of the (at
    most m) entries that copied it; a pixel copied fewer than m times is padded with idx.size,
    which points at a zero appended to the columns.
    """
    Hp, Wp = H + 2 * pad, W + 2 * pad
    Ho, Wo = _conv_out_size(H, kh, stride, pad), _conv_out_size(W, kw, stride, pad)
    c, u, v, i, j = np.ix_(np.arange(C), np.arange(kh), np.arange(kw), np.arange(Ho), np.arange(Wo))
    idx = ((c * Hp + stride * i + u) * Wp + stride * j + v).reshape(C * kh * kw, Ho * Wo)
    pixel = idx.ravel()
    order = np.argsort(pixel, kind="stable")                       # the entries, grouped by pixel
    counts = np.bincount(pixel, minlength=C * Hp * Wp)             # copies of each padded pixel
    first = np.cumsum(counts) - counts                             # where each pixel's group starts
    slot = np.arange(pixel.size) - np.repeat(first, counts)        # rank of each entry in its group
    inv = np.full((C * Hp * Wp, max(1, counts.max())), pixel.size, dtype=np.intp)
    inv[pixel[order], slot] = order
    inv = np.ascontiguousarray(inv.reshape(C, Hp, Wp, -1)[:, pad:pad + H, pad:pad + W])  # padding needs no gradient
    idx.flags.writeable = inv.flags.writeable = False             # cached and shared: read-only
    return idx, inv.reshape(C * H * W, -1)


def conv_windows(x, kh, kw, stride=1, pad=0):
    """As minivit.layers.conv.conv_windows: x (B, C, H, W) -> cols (B, C*kh*kw, Ho*Wo), cols[n] = im2col(x[n:n+1]).T.

    One np.take per image through the index table (an image and its windows stay in the cache, and
    take releases the GIL for the engine's other thread).
    """
    B, C, H, W = x.shape
    idx, _ = _window_tables(C, H, W, kh, kw, stride, pad)
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else np.ascontiguousarray(x)
    flat = xpad.reshape(B, -1)                                     # (B, C*(H+2p)*(W+2p))
    cols = np.empty((B,) + idx.shape, dtype=x.dtype)
    for n in range(B):
        np.take(flat[n], idx, out=cols[n])
    return cols


def conv_windows_adjoint(cols, x_shape, kh, kw, stride=1, pad=0):
    """As minivit.layers.conv.conv_windows_adjoint: cols (B, C*kh*kw, Ho*Wo) -> (B, C, H, W), col2im image by image.

    Each pixel's gradient is the sum of the entries that copied it: one gather per image through the
    inverse table (a zero appended to the columns fills the unused slots), then a sum over those m
    slots as a matrix-vector product.
    """
    B, C, H, W = x_shape
    _, inv = _window_tables(C, H, W, kh, kw, stride, pad)
    padded = np.zeros(cols[0].size + 1, dtype=cols.dtype)          # one image's columns, then the zero
    ones = np.ones((inv.shape[1], 1), dtype=cols.dtype)
    dx = np.empty((B, C * H * W, 1), dtype=cols.dtype)
    for n in range(B):
        padded[:-1] = cols[n].ravel()
        np.matmul(np.take(padded, inv), ones, out=dx[n])           # (C*H*W, m) @ (m, 1)
    return dx.reshape(B, C, H, W)


# ----------------------------------------------------------------------------------------------- loss

# minivit.layers.loss.cross_entropy, integer labels: q = (1 - eps) onehot + eps / K,
# loss_i = -sum_k q_k log softmax(z_i)_k, dlogits = (softmax(z) - q) / B
@_njit(**JIT)
def cross_entropy_kernel(logits, labels, eps, rowloss, dlogits):
    B, K = logits.shape
    for i in range(B):
        top = -np.inf
        for k in range(K):
            top = max(top, logits[i, k])
        s = 0.0
        for k in range(K):
            s += math.exp(logits[i, k] - top)
        lse = top + math.log(s)
        loss = 0.0
        for k in range(K):
            qk = eps / K + (1.0 - eps if k == labels[i] else 0.0)
            logp = logits[i, k] - lse
            loss -= qk * logp
            dlogits[i, k] = (math.exp(logp) - qk) / B
        rowloss[i] = loss


def cross_entropy(logits, labels, label_smoothing):
    """As minivit.layers.loss.cross_entropy with integer labels (checked by the caller): -> 0-d loss, dlogits."""
    z = np.ascontiguousarray(logits)
    B = z.shape[0]
    rowloss = np.empty(B)
    dlogits = np.empty_like(z)
    cross_entropy_kernel(z, np.ascontiguousarray(labels).astype(np.int64, copy=False), label_smoothing, rowloss, dlogits)
    return np.asarray(rowloss.sum() / B if B else np.nan, dtype=z.dtype), dlogits


# ----------------------------------------------------------------------------------------------- AdamW

# minivit.train.optim.AdamW.step, every tensor in one call:
# p <- p (1 - lr wd) for decayed tensors; m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
# p <- p - (lr / bc1) m / (sqrt(v / bc2) + eps).
# The scalars come in the parameters' dtype, so a float32 step rounds (and overflows) as NumPy's does.
@_njit(**JIT)
def adamw_kernel(params, grads, decays, m, v, shrink, b1, one_minus_b1, b2, one_minus_b2, step, bc2, eps):
    start = 0
    for t in range(len(params)):
        p, g = params[t], grads[t]
        decay = decays[t]
        for j in range(p.size):
            mj = b1 * m[start + j] + one_minus_b1 * g[j]
            vj = b2 * v[start + j] + one_minus_b2 * (g[j] * g[j])
            m[start + j] = mj
            v[start + j] = vj
            pj = p[j] * shrink if decay else p[j]
            p[j] = pj - step * mj / (np.sqrt(vj / bc2) + eps)
        start += p.size


def adamw_step(params, grads, decays, m, v, lr, b1, b2, bc1, bc2, eps, weight_decay):
    """As minivit.train.optim.AdamW.step over every tensor in one call (the signature of the CUDA kernel's).

    params, grads: lists of C-contiguous arrays of one dtype, in the same order; decays: booleans;
    m, v: the flat state (every tensor's moments end to end), updated in place."""
    if not params:
        return
    if any(p.shape != g.shape for p, g in zip(params, grads)):
        raise ValueError("AdamW: gradients must match the parameters in shape")
    t = params[0].dtype.type
    flat = tuple(p.reshape(-1) for p in params)                  # views: the parameters are contiguous
    gflat = tuple(np.ascontiguousarray(g, dtype=params[0].dtype).reshape(-1) for g in grads)
    with np.errstate(over="ignore"):                             # lr / bc1 beyond float32 is inf, as in NumPy
        scalars = [t(1.0 - lr * weight_decay), t(b1), t(1.0 - b1), t(b2), t(1.0 - b2), t(lr / bc1), t(bc2), t(eps)]
    adamw_kernel(flat, gflat, np.asarray(decays, dtype=np.bool_), m, v, *scalars)

"""Softmax and multi-head self-attention. Derivation: docs/derivations/attention.md.

Attention is the only layer of the ViT that mixes information across tokens;
every other layer acts on each token alone.
"""
import math
from typing import NamedTuple

import numpy as np

from .activations import dropout_backward, dropout_forward
from ..backend import fused, get_array_module
from .linear import linear_backward, linear_forward
from .cache_pieces import in_pieces
from .posembed import relpos_backward, relpos_forward
from .rowsums import sum_last


def softmax_reference(x, axis=-1):
    """The textbook softmax, exp(x - max) / sum(exp(x - max)) along `axis`. softmax below computes
    the same in place, in cache-sized pieces, with one shift per piece where that is safe;
    tests/test_speed_forms.py pins the two together in float64."""
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention_reference(q, k, v, scale=None):
    """The textbook scaled dot-product attention, softmax(q k^T / sqrt(d)) v ("Attention Is All You
    Need", eq. 1), without dropout. attention_forward scales q instead of the N x N scores and
    writes the softmax over them in place; its backward takes rowsum(dout * out) for the softmax's
    row sums (docs/derivations/attention.md)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return softmax_reference(q @ k.swapaxes(-1, -2) * scale) @ v


def softmax(x, axis=-1, out=None):
    """Numerically stable softmax, exp(x - max) / sum(exp(x - max)): subtracting the row
    maximum leaves the result unchanged (it cancels between numerator and denominator) and
    keeps exp() <= 1. With out=x the input is overwritten: no new array, three passes fewer.
    Over the last axis it runs in cache-sized pieces of rows (minivit/layers/cache_pieces.py)."""
    xp = get_array_module(x)
    kernel = fused(x, "softmax")
    if kernel and axis in (-1, x.ndim - 1):  # one kernel: CUDA on a GPU, numba on a CPU (minivit/cpu/kernels.py)
        return kernel(x, out=out)
    if axis not in (-1, x.ndim - 1):
        e = xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)
        xp.exp(e, out=e)
        e /= e.sum(axis=axis, keepdims=True)
        return e
    return in_pieces(_softmax_rows, [x], [xp.empty_like(x) if out is None else out])[0]


# One shift may serve a whole piece of rows while its logits span less than this: every
# exp(x - shift) then lies in (e^-60, 1], far from float32's overflow (e^88) and underflow (e^-87).
SHARED_SHIFT_SPAN = 60.0


def _softmax_rows(x, out):
    """out = softmax(x) over the last axis (out may be x itself).

    The textbook subtracts each row's own maximum. Any per-row constant cancels, so while the
    piece's logits span less than SHARED_SHIFT_SPAN, its one largest logit serves every row:
    no exp overflows (all arguments <= 0) or underflows (all > -60). One maximum over the
    piece and a scalar subtraction are two fast passes, where NumPy finds 65 or 197-long row
    maxima and broadcasts them back at a cost of several passes (docs/derivations/attention.md).
    A wider piece takes the textbook's row maxima.
    """
    xp = get_array_module(x)
    top = x.max()
    shift = top if top - x.min() < SHARED_SHIFT_SPAN else x.max(axis=-1, keepdims=True)
    xp.subtract(x, shift, out=out)
    xp.exp(out, out=out)
    out /= sum_last(out)                                  # row sums as a matrix-vector product (minivit/layers/rowsums.py)


def softmax_backward(dp, p, axis=-1):
    """Given p = softmax(s) and dL/dp, return dL/ds = p * (dp - sum(dp * p))."""
    kernel = fused(dp, "softmax_backward")
    if kernel and axis in (-1, dp.ndim - 1):
        return kernel(dp, p)
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))


def _softmax_grad_rows(dp, rowdot, p, out):
    """out = p * (dp - rowdot) = softmax_backward(dp, p), given rowdot = rowsum(dp * p) (out may be dp)."""
    get_array_module(dp).subtract(dp, rowdot, out=out)
    out *= p


class AttentionCache(NamedTuple):
    """What attention_backward needs from attention_forward. (With the fused kernels the cache is
    the kernel module's AttentionCache, which keeps q, k, v, the probabilities and the scale.)"""
    q: object              # (..., N, d) the queries, unscaled
    k: object              # (..., N, d)
    v: object              # (..., N, d)
    probs: object          # (..., N, N) softmax(q k^T * scale): each row sums to 1
    probs_dropped: object  # (..., N, N) the probabilities after attention dropout (probs itself without)
    mask: object           # the dropout mask, or None
    out: object            # (..., N, d) the output, probs_dropped @ v
    scale: float


class MHSACache(NamedTuple):
    """What mhsa_backward needs from mhsa_forward."""
    qkv: object            # the qkv projection's cache (minivit/layers/linear.py)
    attention: object      # AttentionCache of the heads' attention, (B, H, N, d) arrays
    proj: object           # the output projection's cache
    heads: int
    rel: object            # the relative position logits' cache, or None (minivit/layers/posembed.py)


class MHSAGrads(NamedTuple):
    """mhsa_backward's result: the input's gradient and the parameters' (rel None without a relative table)."""
    dx: object             # (B, N, D)
    w_qkv: object          # (D, 3D)
    b_qkv: object          # (3D,)
    w_proj: object         # (D, D)
    b_proj: object         # (D,)
    rel: object            # (H, 2N-1, d), or None


def attention_forward(q, k, v, scale=None, p_drop=0.0, rng=None, train=False, bias=None):
    """Scaled dot-product attention softmax(q k^T * scale) v over the last two axes.

    q, k, v (..., N, d) -> out (..., N, d); scale defaults to 1/sqrt(d) (paper eq. 5-6,
    "Attention Is All You Need" eq. 1). The scale multiplies q, (q * scale) k^T, which
    is the same product with N x d multiplications instead of N x N. `bias` (..., N, N), when
    given, is added to the logits before the softmax (the relative position variant's logits).
    The cache keeps q itself, not q * scale: in mhsa q is a view of the qkv projection's
    output, which is kept anyway, so the scaled copy is freed after the product.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    kernel = fused(q, "attention_forward")
    if kernel and bias is None and not (train and p_drop):
        # on a GPU: cuBLAS products and the softmax kernel; on a CPU: the products (MKL's where
        # installed) and the numba softmax, which scales the logits as it reads them (minivit/cpu/kernels.py)
        return kernel(q, k, v, scale)
    qs = q * scale                                        # (..., N, d)
    scores = qs @ k.swapaxes(-1, -2)                      # (..., N, N)
    if bias is not None:
        scores += bias
    attn = softmax(scores, out=scores)                    # (..., N, N): each row sums to 1
    attn_d, mask = dropout_forward(attn, p_drop, rng, train)
    out = attn_d @ v                                      # (..., N, d)
    return out, AttentionCache(q, k, v, attn, attn_d, mask, out, scale)


def attention_backward(dout, cache, with_dbias=False):
    """dout (..., N, d) -> dq, dk, dv (..., N, d); with_dbias: also the logits' gradient (..., N, N),
    which is the gradient of a `bias` added to them.

    The softmax backward p * (dp - rowsum(dp * p)) needs one row sum over the N x N
    matrix dp * p. It equals rowsum(dout * out), a sum over only d entries (the
    FlashAttention identity; derivation in docs/derivations/attention.md), so the
    (..., N, N) gradient is made in two in-place passes.
    """
    if not isinstance(cache, AttentionCache):            # the forward pass ran a fused kernel: its backward
        return fused(dout, "attention_backward")(dout, cache)
    q, k, v, attn, attn_d, mask, out, scale = cache
    dv = attn_d.swapaxes(-1, -2) @ dout                   # (..., N, d)
    dattn = dropout_backward(dout @ v.swapaxes(-1, -2), mask)  # (..., N, N)
    kernel = fused(dout, "softmax_backward")
    if kernel:  # one kernel takes rowsum(dattn * attn) itself and writes in place
        dscores = kernel(dattn, attn, out=dattn)
    else:
        rowdot = sum_last(dout * out)                     # (..., N, 1) = rowsum(dattn * attn)
        dscores, = in_pieces(_softmax_grad_rows, [dattn, rowdot, attn], [dattn])  # (..., N, N), in place
    dq = dscores @ k                                      # (..., N, d)
    dq *= scale
    dk = dscores.swapaxes(-1, -2) @ q                     # (..., N, d)
    dk *= scale
    return (dq, dk, dv, dscores) if with_dbias else (dq, dk, dv)


def mhsa_forward(x, w_qkv, b_qkv, w_proj, b_proj, heads, attn_dropout=0.0, rng=None, train=False, rel=None,
                 keep_cache=True):
    """Multi-head self-attention with one fused qkv projection.

    x (B, N, D), w_qkv (D, 3D), b_qkv (3D,), w_proj (D, D), b_proj (D,) -> (B, N, D).
    The 3D outputs are read as (3, H, d), q first, the layout of timm's Attention.
    rel (H, 2N-1, d): relative position embeddings, whose logits with the scaled queries are
    added to the attention logits (pos_embed='relative', minivit/layers/posembed.py).
    keep_cache=False (inference): the cache is None.
    """
    B, N, D = x.shape
    d = D // heads
    qkv, c_qkv = linear_forward(x, w_qkv, b_qkv)                 # (B, N, 3D)
    qkv = qkv.reshape(B, N, 3, heads, d).transpose(2, 0, 3, 1, 4)  # (3, B, H, N, d)
    if get_array_module(x) is not np:
        # On a GPU, one copy makes q, k and v contiguous; cuBLAS's batched products then take
        # them as they are, where each product would otherwise copy its strided operand again.
        qkv = qkv.copy()
    bias, c_rel = relpos_forward(qkv[0] / math.sqrt(d), rel) if rel is not None else (None, None)  # (B, H, N, N)
    ctx, c_att = attention_forward(qkv[0], qkv[1], qkv[2], p_drop=attn_dropout, rng=rng, train=train,
                                   bias=bias)                     # (B, H, N, d)
    ctx = ctx.transpose(0, 2, 1, 3).reshape(B, N, D)             # (B, N, D): heads concatenated (a copy)
    if not keep_cache:
        c_att = None                                             # the scores are freed before the projection
    if isinstance(c_att, AttentionCache):
        # The attention cache keeps its output for backward; ctx now holds the same numbers, and
        # the projection caches ctx. A view of ctx replaces that copy: one (B, N, D) array fewer.
        c_att = c_att._replace(out=ctx.reshape(B, N, heads, d).transpose(0, 2, 1, 3))
    out, c_proj = linear_forward(ctx, w_proj, b_proj)            # (B, N, D)
    return out, (MHSACache(c_qkv, c_att, c_proj, heads, c_rel) if keep_cache else None)


def mhsa_backward(dout, cache):
    """dout (B, N, D) -> MHSAGrads: dx (B, N, D), dw_qkv, db_qkv, dw_proj, db_proj, and drel
    (H, 2N-1, d) when forward was given a relative table (else None)."""
    c_qkv, c_att, c_proj, heads, c_rel = cache
    B, N, D = dout.shape
    d = D // heads
    dctx, dw_proj, db_proj = linear_backward(dout, c_proj)       # (B, N, D)
    dctx = dctx.reshape(B, N, heads, d).transpose(0, 2, 1, 3)    # (B, H, N, d)
    if get_array_module(dout) is not np:
        dctx = dctx.copy()                                       # contiguous for both products (as in forward)
    drel = None
    if c_rel is None:
        dq, dk, dv = attention_backward(dctx, c_att)             # (B, H, N, d) each
    else:  # the relative logits depend on the queries too: their gradient joins dq
        dq, dk, dv, dbias = attention_backward(dctx, c_att, with_dbias=True)
        dqs, drel = relpos_backward(dbias, c_rel)                # dqs: gradient of q / sqrt(d)
        dq += dqs / math.sqrt(d)
    xp = get_array_module(dout)
    dqkv = xp.stack([g.transpose(0, 2, 1, 3) for g in (dq, dk, dv)], axis=2)  # (B, N, 3, H, d): qkv's layout
    dx, dw_qkv, db_qkv = linear_backward(dqkv.reshape(B, N, 3 * D), c_qkv)  # (B, N, D)
    return MHSAGrads(dx, dw_qkv, db_qkv, dw_proj, db_proj, drel)

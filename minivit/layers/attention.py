"""Softmax and multi-head self-attention. Derivation: docs/derivations/attention.md.

Attention is the only layer of the ViT that mixes information across tokens;
every other layer acts on each token alone.
"""
import math
from typing import NamedTuple

from .activations import dropout_backward, dropout_forward
from ..backend import fused, get_array_module
from ..contract import AttentionCache
from .linear import linear_backward, linear_forward
from .posembed import relpos_backward, relpos_forward


def softmax(x, axis=-1, out=None):
    """Numerically stable softmax, exp(x - max) / sum(exp(x - max)): subtracting the row maximum leaves
    the result unchanged (it cancels between numerator and denominator) and keeps exp() <= 1.
    out: an array the kernels may write into (x itself, when the caller has no further use for x)."""
    kernel = fused(x, "softmax")
    if kernel and axis in (-1, x.ndim - 1):  # one kernel: numba on a CPU, CUDA on a GPU
        return kernel(x, out=out)
    e = get_array_module(x).exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dp, p, axis=-1):
    """Given p = softmax(s) and dL/dp, return dL/ds = p * (dp - sum(dp * p))."""
    kernel = fused(dp, "softmax_backward")
    if kernel and axis in (-1, dp.ndim - 1):
        return kernel(dp, p)
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))


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
    "Attention Is All You Need" eq. 1). `bias` (..., N, N), when given, is added to the logits
    before the softmax (the relative position variant's logits). The cache keeps q itself, not q * scale.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    kernel = fused(q, "attention_forward")
    if kernel and bias is None and not (train and p_drop):
        # the products (MKL's where installed, cuBLAS's on a GPU) and the softmax kernel
        return kernel(q, k, v, scale)
    scores = (q @ k.swapaxes(-1, -2)) * scale             # (..., N, N)
    if bias is not None:
        scores = scores + bias
    attn = softmax(scores)                                # (..., N, N): each row sums to 1
    attn_d, mask = dropout_forward(attn, p_drop, rng, train)
    out = attn_d @ v                                      # (..., N, d)
    return out, AttentionCache(q, k, v, attn, attn_d, mask, out, scale)


def attention_backward(dout, cache, with_dbias=False):
    """dout (..., N, d) -> dq, dk, dv (..., N, d); with_dbias: also the logits' gradient (..., N, N),
    which is the gradient of a `bias` added to them.

    The softmax backward p * (dp - rowsum(dp * p)) needs one row sum over the N x N
    matrix dp * p. It equals rowsum(dout * out), a sum over only d entries (the
    FlashAttention identity; derivation in docs/derivations/attention.md).
    """
    kernel = fused(dout, "attention_backward")
    if kernel and cache.mask is None and not with_dbias:   # what the kernel's forward would have kept
        return kernel(dout, cache)
    q, k, v, attn, attn_d, mask, out, scale = cache
    dv = attn_d.swapaxes(-1, -2) @ dout                   # (..., N, d)
    dattn = dropout_backward(dout @ v.swapaxes(-1, -2), mask)  # (..., N, N)
    rowdot = (dout * out).sum(axis=-1, keepdims=True)     # (..., N, 1) = rowsum(dattn * attn)
    dscores = attn * (dattn - rowdot)                     # (..., N, N)
    dq = (dscores @ k) * scale                            # (..., N, d)
    dk = (dscores.swapaxes(-1, -2) @ q) * scale           # (..., N, d)
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
    bias, c_rel = relpos_forward(qkv[0] / math.sqrt(d), rel) if rel is not None else (None, None)  # (B, H, N, N)
    ctx, c_att = attention_forward(qkv[0], qkv[1], qkv[2], p_drop=attn_dropout, rng=rng, train=train,
                                   bias=bias)                     # (B, H, N, d)
    ctx = ctx.transpose(0, 2, 1, 3).reshape(B, N, D)             # (B, N, D): heads concatenated (a copy)
    if not keep_cache:
        c_att = None                                             # the scores are freed before the projection
    if isinstance(c_att, AttentionCache):   # (the GPU kernel's cache is a type of its own: nothing to replace)
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

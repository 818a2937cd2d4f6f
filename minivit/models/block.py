"""The MLP and the pre-LN Transformer encoder block (paper eq. 2-3).

    x = x + MSA(LN(x))
    x = x + MLP(LN(x))

Parameters are read from the model's flat dict under a prefix such as
"blocks.3."; gradients come back under the same keys.
"""
from typing import NamedTuple

from ..layers.activations import (drop_path_backward, drop_path_forward, dropout_backward, dropout_forward,
                          gelu_backward, gelu_forward)
from ..layers.attention import mhsa_backward, mhsa_forward
from ..layers.linear import linear_backward, linear_forward
from ..layers.norm import layernorm_backward, layernorm_forward


class MLPCache(NamedTuple):
    fc1: object       # the first dense layer's cache
    gelu: object      # GELU's cache: its derivative at fc1's output
    drop1: object     # dropout masks (None when off)
    fc2: object
    drop2: object


class BlockCache(NamedTuple):
    """One encoder block's caches, in the order forward made them; backward reads them in reverse."""
    prefix: str       # the block's parameter names start with this ("blocks.3.")
    norm1: object     # LayerNorm before attention
    attn: object      # MHSACache (minivit/layers/attention.py)
    drop_attn: object # dropout mask on attention's output
    ls1: object       # LayerScale's cache (None when off)
    drop_path1: object  # the stochastic-depth mask of the attention branch (B, 1, 1), or None
    norm2: object
    mlp: object       # MLPCache
    ls2: object
    drop_path2: object


def mlp_forward(x, w1, b1, w2, b2, gelu="exact", p_drop=0.0, rng=None, train=False, keep_cache=True):
    """x (B, N, D) -> fc1 -> GELU -> dropout -> fc2 -> dropout -> (B, N, D).

    fc1's bias is added by GELU (gelu_forward's bias), so that a kernel does the add and the GELU in one
    pass; fc1's output is then no longer needed and GELU may write over it (out=h). keep_cache=False
    (inference) skips what only backward needs (GELU's derivative), and the cache is None."""
    h, c1 = linear_forward(x, w1, None)                       # (B, N, M), x W1
    h, cg = gelu_forward(h, gelu, keep_cache, out=h, bias=b1) # (B, N, M), GELU(x W1 + b1)
    h, m1 = dropout_forward(h, p_drop, rng, train)
    y, c2 = linear_forward(h, w2, b2)           # (B, N, D)
    y, m2 = dropout_forward(y, p_drop, rng, train)
    return y, (MLPCache(c1, cg, m1, c2, m2) if keep_cache else None)


def mlp_backward(dy, cache):
    c1, cg, m1, c2, m2 = cache
    dy = dropout_backward(dy, m2)
    dh, dw2, db2 = linear_backward(dy, c2)      # (B, N, M)
    dh = dropout_backward(dh, m1)
    dh = gelu_backward(dh, cg)
    dx, dw1, db1 = linear_backward(dh, c1)      # (B, N, D)
    return dx, dw1, db1, dw2, db2


def layer_scale_forward(x, gamma):
    """LayerScale (Touvron et al., CaiT, 2021): x (..., D) * gamma (D,), a learned gain per channel.

    Initialised small (e.g. 1e-4), it starts each residual branch near zero, so a deep stack
    starts near the identity and the branches grow in as they learn. gamma None: off."""
    return (x, None) if gamma is None else (x * gamma, (x, gamma))


def layer_scale_backward(dy, cache):
    """dy (..., D) -> dx = dy * gamma, dgamma (D,) = sum of dy * x over every position (None when off)."""
    if cache is None:
        return dy, None
    x, gamma = cache
    return dy * gamma, (dy * x).reshape(-1, x.shape[-1]).sum(axis=0)


def drop_path_rate(cfg, i):
    """Block i's stochastic-depth rate: linear from 0 at the first block to cfg.drop_path at the last."""
    return cfg.drop_path * i / (cfg.depth - 1) if cfg.depth > 1 else cfg.drop_path


def _residual(x, h, keep_cache):
    """x + h. In inference (keep_cache=False) the sum is written into h, the branch's output, which
    nothing else holds then: one (B, N, D) array fewer to allocate per residual (when both have one
    dtype; otherwise x + h, which promotes)."""
    if keep_cache or h.dtype != x.dtype:
        return x + h
    h += x
    return h


def block_forward(x, params, prefix, cfg, rng=None, train=False, keep_cache=True, drop_path=0.0):
    """One encoder block: x (B, N, D) -> (B, N, D). keep_cache=False: for inference, no backward;
    no layer keeps a cache, so each activation is freed once the next layer has read it.

    With cfg.layer_scale, each branch is scaled by its gains (ls1.gamma, ls2.gamma); with
    `drop_path` (this block's stochastic-depth rate, drop_path_rate), each image's branch is
    dropped at that rate in training:  x = x + drop_path(ls1 * drop(MSA(LN1(x)))), and so for the MLP."""
    p = lambda name: params[prefix + name]
    h, c_ln1 = layernorm_forward(x, p("norm1.w"), p("norm1.b"), cfg.ln_eps, keep_cache)
    h, c_att = mhsa_forward(h, p("attn.qkv.w"), p("attn.qkv.b"), p("attn.proj.w"), p("attn.proj.b"),
                            cfg.heads, cfg.attn_dropout, rng, train, rel=params.get(prefix + "attn.pos_embed_rel"),
                            keep_cache=keep_cache)
    h, m_att = dropout_forward(h, cfg.dropout, rng, train)
    h, c_ls1 = layer_scale_forward(h, params.get(prefix + "ls1.gamma"))
    h, m_dp1 = drop_path_forward(h, drop_path, rng, train)
    x = _residual(x, h, keep_cache)             # x + h, the residual around attention
    h, c_ln2 = layernorm_forward(x, p("norm2.w"), p("norm2.b"), cfg.ln_eps, keep_cache)
    h, c_mlp = mlp_forward(h, p("mlp.fc1.w"), p("mlp.fc1.b"), p("mlp.fc2.w"), p("mlp.fc2.b"),
                           cfg.gelu, cfg.dropout, rng, train, keep_cache)
    h, c_ls2 = layer_scale_forward(h, params.get(prefix + "ls2.gamma"))
    h, m_dp2 = drop_path_forward(h, drop_path, rng, train)
    x = _residual(x, h, keep_cache)             # x + h, the residual around the MLP
    if not keep_cache:
        return x, None
    return x, BlockCache(prefix, c_ln1, c_att, m_att, c_ls1, m_dp1, c_ln2, c_mlp, c_ls2, m_dp2)


def block_backward(dx, cache, grads):
    """dx (B, N, D) -> dx (B, N, D); writes this block's parameter gradients into `grads`."""
    prefix, c_ln1, c_att, m_att, c_ls1, m_dp1, c_ln2, c_mlp, c_ls2, m_dp2 = cache
    # x = x + MLP(LN2(x)): the residual passes dx through unchanged and adds the branch's gradient.
    dh = drop_path_backward(dx, m_dp2)
    dh, dgamma = layer_scale_backward(dh, c_ls2)
    if dgamma is not None:
        grads[prefix + "ls2.gamma"] = dgamma
    dh, dw1, db1, dw2, db2 = mlp_backward(dh, c_mlp)
    dh, dln_w, dln_b = layernorm_backward(dh, c_ln2)
    _put(grads, prefix, {"mlp.fc1.w": dw1, "mlp.fc1.b": db1, "mlp.fc2.w": dw2, "mlp.fc2.b": db2,
                         "norm2.w": dln_w, "norm2.b": dln_b})
    dx = dx + dh
    # x = x + drop_path(ls1 * drop(MSA(LN1(x))))
    dh = drop_path_backward(dx, m_dp1)
    dh, dgamma = layer_scale_backward(dh, c_ls1)
    if dgamma is not None:
        grads[prefix + "ls1.gamma"] = dgamma
    dh = dropout_backward(dh, m_att)
    dh, dwqkv, dbqkv, dwproj, dbproj, drel = mhsa_backward(dh, c_att)  # drel: pos_embed='relative' only
    if drel is not None:
        grads[prefix + "attn.pos_embed_rel"] = drel
    dh, dln_w, dln_b = layernorm_backward(dh, c_ln1)
    _put(grads, prefix, {"attn.qkv.w": dwqkv, "attn.qkv.b": dbqkv, "attn.proj.w": dwproj, "attn.proj.b": dbproj,
                         "norm1.w": dln_w, "norm1.b": dln_b})
    return dx + dh


def _put(grads, prefix, named):
    for name, value in named.items():
        grads[prefix + name] = value

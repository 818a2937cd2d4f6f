"""The ViT's initial parameters, as the original ViT code draws them, and mimetic attention (Trockman & Kolter)."""
import math

import numpy as np

from ..backend import xp as backend_xp
from ..config import ViTConfig
from .vit import param_shapes


def _truncated_normal(rng, shape, std):
    """Normal(0, std) truncated to +-2 std, by resampling what falls outside."""
    z = rng.standard_normal(shape)
    while True:
        bad = np.abs(z) > 2.0
        if not bad.any():
            return z * std / 0.87962566103423978  # the std of N(0,1) truncated to [-2, 2]
        z[bad] = rng.standard_normal(int(bad.sum()))


# Mimetic initialisation's mixing weights: W_q W_k^T ~ a Z + b I per head, W_v W_proj ~ a Z - b I.
# The scheme is Trockman & Kolter's (2023); these values are minivit's choice, to be tuned.
MIMETIC_QK = (0.7, 0.7)


MIMETIC_VO = (0.4, 0.4)


def _factor(a, rank):
    """(L, R) with L @ R.T the best rank-`rank` approximation of the square matrix a (SVD):
    a = U S V^T, L = U_r sqrt(S_r), R = V_r sqrt(S_r)."""
    u, s, vt = np.linalg.svd(a)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, vt[:rank].T * root


def mimetic_attention(rng, D, heads):
    """Mimetic initialisation of one block's attention (Trockman & Kolter, 2023): the weights are
    drawn so that each head's W_q W_k^T is near +I and W_v W_proj near -I, the pattern found in
    pre-trained ViTs, so that attention starts out favouring each token's own neighbourhood
    (through the position embeddings) and the branch starts out subtracting its input.

    With Z ~ N(0, 1/D) (D x D): per head h, W_q^h W_k^h^T is the best rank-d approximation of
    a1 Z_h + b1 I (d = D / heads); W_v W_proj = a2 Z - b2 I exactly (full rank). -> (w_qkv (D, 3D), w_proj (D, D))
    """
    d = D // heads
    a1, b1 = MIMETIC_QK
    a2, b2 = MIMETIC_VO
    wq, wk = np.empty((D, D)), np.empty((D, D))
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        wq[:, cols], wk[:, cols] = _factor(a1 * rng.normal(0.0, D ** -0.5, (D, D)) + b1 * np.eye(D), d)
    wv, wproj_t = _factor(a2 * rng.normal(0.0, D ** -0.5, (D, D)) - b2 * np.eye(D), D)
    return np.concatenate([wq, wk, wv], axis=1), wproj_t.T


def init_params(cfg, seed=0, dtype="float32"):
    """Fresh parameters as the original ViT code initialises them (google-research/vision_transformer).

    Class token and head zeros; position embedding N(0, 0.02); dense kernels Xavier
    uniform (the fused qkv kernel as three D x D kernels, as Flax's separate q, k, v);
    MLP biases N(0, 1e-6); patch projection LeCun normal (Flax's default for nn.Conv);
    LayerNorm w = 1, b = 0. Drawn on the host with NumPy, then moved to the backend.
    cfg.attn_init="mimetic" replaces the qkv and projection kernels by mimetic_attention's.
    """
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"cfg must be a ViTConfig, got {type(cfg).__name__}")
    rng = np.random.default_rng(seed)
    xavier = lambda fan_in, fan_out, shape: rng.uniform(-1, 1, shape) * math.sqrt(6.0 / (fan_in + fan_out))
    D = cfg.dim
    params = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[-1]
        if name.startswith("stem.") and name.endswith("conv.w"):
            v = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[1:])), shape)  # He normal: a ReLU follows
        elif name == "patch_embed.w":
            fan_in = math.prod(shape[1:])
            v = _truncated_normal(rng, shape, 1.0 / math.sqrt(fan_in))
        elif leaf.startswith("pos_embed") or name == "mask_token":  # pos_embed(_row, _col), blocks.i.pos_embed
            v = rng.normal(0.0, 0.02, shape)
        elif name.startswith(("head.", "mpp_head.")) or name == "cls_token":
            v = np.zeros(shape)
        elif ".norm" in name or name.startswith("norm."):
            v = np.ones(shape) if leaf == "w" else np.zeros(shape)
        elif name.endswith("attn.qkv.w"):
            v = xavier(D, D, shape)
        elif leaf == "w":
            v = xavier(shape[0], shape[1], shape)
        elif ".mlp." in name:
            v = rng.normal(0.0, 1e-6, shape)
        elif leaf == "gamma":                                   # LayerScale: every gain starts at cfg.layer_scale
            v = np.full(shape, cfg.layer_scale)
        else:
            v = np.zeros(shape)
        params[name] = v
    if cfg.attn_init == "mimetic":
        for i in range(cfg.depth):
            p = f"blocks.{i}.attn."
            params[p + "qkv.w"], params[p + "proj.w"] = mimetic_attention(rng, D, cfg.heads)
    xp = backend_xp()
    return {k: xp.asarray(v, dtype=dtype) for k, v in params.items()}

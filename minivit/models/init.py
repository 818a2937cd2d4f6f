"""The ViT's initial parameters, as the original ViT code draws them, and mimetic attention (Trockman & Kolter)."""
import math

import numpy as np

from ..backend import get_array_module, to_numpy, xp as backend_xp
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


# Patch whitening's floor under the eigenvalues, in the units of images normalised per channel to mean 0 and
# std 1. airbench (Jordan, 2024) uses 5e-4 for 2 x 2 patches (12 values). CIFAR-10's 4 x 4 JPEG patches (48 values)
# have eigenvalues below 1e-4 (docs/derivations/patch_whitening.md), which 5e-4 would raise to the scale of the
# image's main directions; 1e-2 whitens the directions above about 1% of a pixel's variance and
# leaves the near-empty ones small.
WHITEN_EPS = 1e-2


def whiten_patch_embed(params, x, cfg, eps=WHITEN_EPS):
    """Patch-whitening initialisation of the patch projection (airbench's first layer, Jordan 2024), from
    normalised training images x (B, C, H, W). -> new params; nothing else changes.

    The image's P x P patches, flattened to n = C P P values, have mean mu and covariance
    Sigma = V diag(lambda) V^T (eigenvalues descending). Filter i is v_i / sqrt(lambda_i + eps): its output over
    the patches has variance lambda_i / (lambda_i + eps), about 1, and is uncorrelated with every other filter's.
    As in airbench each filter comes with its negative, so the first 2k rows of w (D, C, P, P) are the k = min(D // 2, n)
    largest directions, + then -; the bias centres them, b = -w mu. Rows past 2k keep their initialisation.
    The whole derivation: docs/derivations/patch_whitening.md."""
    if cfg.stem_channels:
        raise ValueError("patch whitening initialises the patch projection of the image; the hybrid's reads a "
                         "feature map (cfg.stem_channels), so it cannot")
    B, C, H, W = x.shape
    P = cfg.patch_size
    if (C, H, W) != (cfg.in_channels, cfg.image_size, cfg.image_size):
        raise ValueError(f"patch whitening needs images of the model's shape ({cfg.in_channels}, {cfg.image_size}, "
                         f"{cfg.image_size}), got {tuple(x.shape[1:])}")
    x = to_numpy(x).astype(np.float64)
    g = H // P
    patches = x.reshape(B, C, g, P, g, P).transpose(0, 2, 4, 1, 3, 5).reshape(-1, C * P * P)  # (B N, n): as w's rows
    if len(patches) < 2:
        raise ValueError("patch whitening needs at least two patches to estimate their covariance")
    mu = patches.mean(axis=0)                                  # (n,)
    centred = patches - mu
    sigma = centred.T @ centred / (len(patches) - 1)           # (n, n)
    lam, v = np.linalg.eigh(sigma)                             # ascending
    lam, v = lam[::-1], v[:, ::-1]                             # descending: the largest variance first
    w = to_numpy(params["patch_embed.w"]).astype(np.float64).reshape(cfg.dim, -1).copy()   # (D, n)
    k = min(cfg.dim // 2, v.shape[1])
    filters = (v[:, :k] / np.sqrt(np.maximum(lam[:k], 0.0) + eps)).T   # (k, n)
    w[:k], w[k:2 * k] = filters, -filters
    b = to_numpy(params["patch_embed.b"]).astype(np.float64)
    b[:2 * k] = -(w[:2 * k] @ mu)
    out = dict(params)
    xp, dtype = get_array_module(params["patch_embed.w"]), params["patch_embed.w"].dtype
    out["patch_embed.w"] = xp.asarray(w.reshape(params["patch_embed.w"].shape), dtype=dtype)
    out["patch_embed.b"] = xp.asarray(b, dtype=dtype)
    return out

"""The Vision Transformer: parameters, forward and backward (paper section 3.1, eq. 1-4).

    z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos      patch embedding, class token, positions
    z_l = blocks(z_{l-1}), l = 1..L                    pre-LN encoder blocks (block.py)
    y = head(pool(LN(z_L)))                            class token or mean of patch tokens

Parameter names follow timm's VisionTransformer with `w`/`b` for weight/bias
(`blocks.3.attn.qkv.w`); dense kernels are stored (in, out) so a layer reads x @ w,
the patch projection (D, C, P, P) as torch F.conv2d. minivit.timm converts.
"""
import math
from dataclasses import replace

import numpy as np

from ..layers.activations import dropout_backward, dropout_forward
from ..backend import get_array_module, xp as backend_xp
from .block import block_backward, block_forward, drop_path_rate
from ..config import ViTConfig
from ..layers.conv import patch_embed_backward, patch_embed_forward
from ..layers.linear import linear_backward, linear_forward
from ..layers.norm import layernorm_backward, layernorm_forward
from ..layers.posembed import block_pos_shapes, pos_backward, pos_forward, pos_shapes
from ..layers.stem import stem_backward, stem_forward, stem_shapes
from ..layers.posembed import sincos_table as sincos_pos_embed  # noqa: F401  (minivit.sincos_pos_embed)


def param_shapes(cfg):
    """Name -> shape of every parameter, in a fixed order, without allocating anything."""
    D, C, P, M, K = cfg.dim, cfg.patch_channels, cfg.patch_size, cfg.mlp_dim, cfg.num_classes
    shapes = stem_shapes(cfg)                       # the hybrid's CNN stem, if any (stem.py)
    shapes.update({"patch_embed.w": (D, C, P, P), "patch_embed.b": (D,), "cls_token": (1, 1, D)})
    if not cfg.pos_embed_every_layer:
        shapes.update(pos_shapes(cfg))                            # minivit/layers/posembed.py
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        if cfg.pos_embed_every_layer:
            shapes.update(pos_shapes(cfg, p))
        shapes.update(block_pos_shapes(cfg, p))  # the relative variant's tables
        shapes.update({
            p + "norm1.w": (D,), p + "norm1.b": (D,),
            p + "attn.qkv.w": (D, 3 * D), p + "attn.qkv.b": (3 * D,),
            p + "attn.proj.w": (D, D), p + "attn.proj.b": (D,),
            **({p + "ls1.gamma": (D,)} if cfg.layer_scale else {}),      # LayerScale's gains (block.py)
            p + "norm2.w": (D,), p + "norm2.b": (D,),
            p + "mlp.fc1.w": (D, M), p + "mlp.fc1.b": (M,),
            p + "mlp.fc2.w": (M, D), p + "mlp.fc2.b": (D,),
            **({p + "ls2.gamma": (D,)} if cfg.layer_scale else {}),
        })
    shapes.update({"norm.w": (D,), "norm.b": (D,)})
    if cfg.head == "classify":
        shapes.update({"head.w": (D, K), "head.b": (K,)})
    else:  # masked patch prediction's [mask] token and colour head (minivit/models/mpp.py)
        from .mpp import mpp_shapes
        shapes.update(mpp_shapes(cfg))
    return shapes


def count_params(cfg):
    """Number of trainable parameters of a configuration (nothing is allocated)."""
    return sum(math.prod(s) for s in param_shapes(cfg).values())


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


def with_new_head(params, cfg, num_classes):
    """Fine-tuning's start (paper 3.2): the encoder of `params` with a new, zero class head for
    `num_classes`, whatever head it had (a class head, or pre-training's colour head and [mask]).
    -> (params, cfg)."""
    cfg = replace(cfg, num_classes=num_classes, head="classify")
    dtype, xp = params["cls_token"].dtype, get_array_module(params["cls_token"])
    new = {k: params[k] for k in param_shapes(cfg) if not k.startswith("head.")}  # the head comes last
    new["head.w"] = xp.zeros((cfg.dim, num_classes), dtype=dtype)
    new["head.b"] = xp.zeros((num_classes,), dtype=dtype)
    return new, cfg


def check_input(x, cfg, params=None):
    """Raise a clear ValueError unless x is a float (B, C, H, W) batch this model accepts."""
    C, S = cfg.in_channels, cfg.image_size
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4:
        raise ValueError(f"input must be a 4-D batch (B, C, H, W) = (B, {C}, {S}, {S}), got shape {shape}")
    if shape[1] != C:
        raise ValueError(f"input has {shape[1]} channels, the model expects {C} (shape (B, C, H, W), got {shape})")
    if shape[2:] != (S, S):
        raise ValueError(f"input images are {shape[2]}x{shape[3]}, the model expects {S}x{S} (got shape {shape})")
    if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
        raise ValueError(f"input must be a floating-point array, got dtype {getattr(x, 'dtype', type(x))}; "
                         "normalise images to floats first")
    if params is not None and get_array_module(x) is not get_array_module(params["cls_token"]):
        raise ValueError("input and parameters live on different backends; move the batch with minivit.to_device")


def forward(params, x, cfg, train=False, rng=None, keep_cache=True):
    """x (B, C, H, W) -> logits (B, K), cache for backward.

    train=True enables dropout and stochastic depth (drop_path), whose masks are drawn from
    `rng` (needed when any of their rates is non-zero). Nothing else differs between
    training and evaluation.
    keep_cache=False is for inference: no layer keeps a cache, so each activation is freed
    as soon as the next layer has read it, and memory holds a layer's inputs and outputs,
    not the whole model's activations; the cache returned is then None.
    """
    if cfg.head != "classify":
        raise ValueError(f"this model has no class head (head={cfg.head!r}: a masked-patch-prediction model, "
                         "minivit/models/mpp.py); fine-tune it first (`minivit finetune CHECKPOINT --data ...`)")
    tok, c_embed = embed_patches(params, x, cfg)                                           # (B, N, D)
    if not keep_cache:
        c_embed = None                                   # the patches (and a stem's maps) are freed here
    z, c_enc = encode(params, tok, cfg, train, rng, keep_cache)                            # (B, N+1, D)
    pooled = z[:, 0] if cfg.pool == "token" else z[:, 1:].mean(axis=1)                    # (B, D)
    logits, c_head = linear_forward(pooled, params["head.w"], params["head.b"])            # (B, K)
    if not keep_cache:
        return logits, None
    return logits, (cfg, z.shape, c_embed, c_enc, c_head)


def backward(dlogits, cache):
    """dlogits (B, K) -> grads: a dict with the same keys and shapes as params."""
    cfg, z_shape, c_embed, c_enc, c_head = cache
    xp = get_array_module(dlogits)
    grads = {}
    dpooled, grads["head.w"], grads["head.b"] = linear_backward(dlogits, c_head)  # (B, D)
    dz = xp.zeros(z_shape, dtype=dlogits.dtype)                                    # (B, N+1, D)
    if cfg.pool == "token":
        dz[:, 0] = dpooled
    else:  # the mean spreads its gradient evenly over the N patch tokens
        dz[:, 1:] = dpooled[:, None, :] / (z_shape[1] - 1)
    dtok = encode_backward(dz, c_enc, grads)
    embed_patches_backward(dtok, c_embed, grads)
    return {k: grads[k] for k in param_shapes(cfg)}  # the order of params


def embed_patches(params, x, cfg):
    """x (B, C, H, W) -> the patch embeddings x_p E (B, N, D), eq. 1 without class token and positions.

    With a hybrid stem, the patches are cut from its feature map instead of the image."""
    check_input(x, cfg, params)
    x = x.astype(params["cls_token"].dtype, copy=False)
    x, c_stem = stem_forward(x, params, cfg)          # the hybrid's feature map (B, F, H', W'), or x itself
    tok, c_patch = patch_embed_forward(x, params["patch_embed.w"], params["patch_embed.b"])  # (B, N, D)
    return tok, (c_stem, c_patch)


def embed_patches_backward(dtok, cache, grads):
    """dtok (B, N, D) -> the patch projection's (and stem's) gradients, added to `grads`."""
    c_stem, c_patch = cache
    # the image needs no gradient; a stem's feature map does
    dx, grads["patch_embed.w"], grads["patch_embed.b"] = patch_embed_backward(dtok, c_patch, need_dx=bool(c_stem))
    stem_backward(dx, c_stem, grads)


def encode(params, tok, cfg, train=False, rng=None, keep_cache=True):
    """Patch embeddings (B, N, D) -> the encoder's normalised output tokens (B, N+1, D), eq. 1-4.

    Prepends the class token, adds the position embeddings, runs the L blocks and the final
    LayerNorm; token 0 is the class token. Masked patch prediction (minivit/models/mpp.py)
    corrupts `tok` before it comes here."""
    xp = get_array_module(tok)
    B = tok.shape[0]
    cls = xp.broadcast_to(params["cls_token"], (B, 1, cfg.dim))                           # (B, 1, D)
    z = xp.concatenate([cls, tok], axis=1)                                                 # (B, N+1, D)
    c_pos = []  # position embeddings: once here, or at the start of every block (posembed.py)
    if not cfg.pos_embed_every_layer:
        z, c = pos_forward(z, params, cfg)                                                 # + E_pos
        c_pos.append(c)
    z, m_emb = dropout_forward(z, cfg.dropout, rng, train)
    c_blocks = []
    for i in range(cfg.depth):
        if cfg.pos_embed_every_layer:
            z, c = pos_forward(z, params, cfg, f"blocks.{i}.")
            c_pos.append(c)
        z, c = block_forward(z, params, f"blocks.{i}.", cfg, rng, train, keep_cache,
                             drop_path_rate(cfg, i))                                      # (B, N+1, D)
        if keep_cache:
            c_blocks.append(c)
    z, c_norm = layernorm_forward(z, params["norm.w"], params["norm.b"], cfg.ln_eps, keep_cache)  # (B, N+1, D)
    return z, ((cfg, m_emb, c_blocks, c_norm, c_pos) if keep_cache else None)


def encode_backward(dz, cache, grads):
    """dz (B, N+1, D) -> dtok (B, N, D); the encoder's parameter gradients are added to `grads`."""
    cfg, m_emb, c_blocks, c_norm, c_pos = cache
    dz, grads["norm.w"], grads["norm.b"] = layernorm_backward(dz, c_norm)
    for i in reversed(range(len(c_blocks))):
        dz = block_backward(dz, c_blocks[i], grads)
        if cfg.pos_embed_every_layer:
            dz, g = pos_backward(dz, c_pos[i])
            grads.update(g)
    dz = dropout_backward(dz, m_emb)
    if not cfg.pos_embed_every_layer:
        dz, g = pos_backward(dz, c_pos[0])
        grads.update(g)
    grads["cls_token"] = dz[:, :1].sum(axis=0, keepdims=True)                      # (1, 1, D)
    return dz[:, 1:]                                                                # (B, N, D)

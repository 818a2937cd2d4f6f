"""The Vision Transformer: parameters, forward and backward (paper section 3.1, eq. 1-4).

    z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos      patch embedding, class token, positions
    z_l = blocks(z_{l-1}), l = 1..L                    pre-LN encoder blocks (block.py)
    y = head(pool(LN(z_L)))                            class token or mean of patch tokens

Parameter names follow timm's VisionTransformer with `w`/`b` for weight/bias
(`blocks.3.attn.qkv.w`); dense kernels are stored (in, out) so a layer reads x @ w,
the patch projection (D, C, P, P) as torch F.conv2d. minivit.io.timm converts.
"""
import math
from dataclasses import replace
from typing import NamedTuple

from ..layers.activations import (dropout_backward, dropout_forward, patch_dropout_backward,
                                  patch_dropout_forward)
from ..backend import get_array_module
from .mpp_shapes import mpp_shapes
from .block import block_backward, block_forward, drop_path_rate
from ..layers.conv import patch_embed_backward, patch_embed_forward
from ..layers.linear import linear_backward, linear_forward
from ..layers.norm import layernorm_backward, layernorm_forward
from ..layers.posembed import block_pos_shapes, pos_backward, pos_forward, pos_shapes
from ..layers.stem import stem_backward, stem_forward, stem_shapes


class EncoderCache(NamedTuple):
    cfg: object
    drop_mask: object   # dropout on the embeddings, or None
    patch_drop: object  # the patch tokens PatchDropout kept, or None
    blocks: list        # a BlockCache per block (minivit/models/block.py)
    norm: object        # the final LayerNorm's cache
    pos: list           # the position embeddings' caches: one, or one per block (pos_embed_every_layer)


class ViTCache(NamedTuple):
    cfg: object
    z_shape: tuple      # (B, N+1, D): the encoder's output
    embed: object       # the patch embedding's (and a stem's) caches
    encoder: EncoderCache
    head: object        # the head's dense-layer cache


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
        shapes.update(mpp_shapes(cfg))
    return shapes


def count_params(cfg):
    """Number of trainable parameters of a configuration (nothing is allocated)."""
    return sum(math.prod(s) for s in param_shapes(cfg).values())


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


def require_class_head(cfg):
    """Raise a clear ValueError unless the model ends in the class head (pre-training's does not)."""
    if cfg.head != "classify":
        raise ValueError(f"this model has no class head (head={cfg.head!r}: a masked-patch-prediction model, "
                         "minivit/models/mpp.py); fine-tune it first (`minivit finetune CHECKPOINT --data ...`)")


def forward(params, x, cfg, train=False, rng=None, keep_cache=True):
    """x (B, C, H, W) -> logits (B, K), cache for backward.

    train=True enables dropout and stochastic depth (drop_path), whose masks are drawn from
    `rng` (needed when any of their rates is non-zero). Nothing else differs between
    training and evaluation.
    keep_cache=False is for inference: no layer keeps a cache, so each activation is freed
    as soon as the next layer has read it, and memory holds a layer's inputs and outputs,
    not the whole model's activations; the cache returned is then None.
    """
    require_class_head(cfg)
    tok, c_embed = embed_patches(params, x, cfg)                                           # (B, N, D)
    if not keep_cache:
        c_embed = None                                   # the patches (and a stem's maps) are freed here
    z, c_enc = encode(params, tok, cfg, train, rng, keep_cache)                            # (B, N+1, D)
    pooled = z[:, 0] if cfg.pool == "token" else z[:, 1:].mean(axis=1)                    # (B, D)
    logits, c_head = linear_forward(pooled, params["head.w"], params["head.b"])            # (B, K)
    if not keep_cache:
        return logits, None
    return logits, ViTCache(cfg, z.shape, c_embed, c_enc, c_head)


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
    z, c_pd = patch_dropout_forward(z, cfg.patch_dropout, rng, train)                     # (B, K+1, D) in training
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
    return z, (EncoderCache(cfg, m_emb, c_pd, c_blocks, c_norm, c_pos) if keep_cache else None)


def encode_backward(dz, cache, grads):
    """dz (B, N+1, D) -> dtok (B, N, D); the encoder's parameter gradients are added to `grads`."""
    cfg, m_emb, c_pd, c_blocks, c_norm, c_pos = cache
    dz, grads["norm.w"], grads["norm.b"] = layernorm_backward(dz, c_norm)
    for i in reversed(range(len(c_blocks))):
        dz = block_backward(dz, c_blocks[i], grads)
        if cfg.pos_embed_every_layer:
            dz, g = pos_backward(dz, c_pos[i])
            grads.update(g)
    dz = dropout_backward(dz, m_emb)
    dz = patch_dropout_backward(dz, c_pd)                                           # (B, N+1, D) again
    if not cfg.pos_embed_every_layer:
        dz, g = pos_backward(dz, c_pos[0])
        grads.update(g)
    grads["cls_token"] = dz[:, :1].sum(axis=0, keepdims=True)                      # (1, 1, D)
    return dz[:, 1:]                                                                # (B, N, D)

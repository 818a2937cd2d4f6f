"""The official checkpoints: the .npz layout of google-research/vision_transformer.

Those files hold flat arrays named by the Flax module path. minivit's names and layouts:

| official key (L blocks, i = 0 .. L-1)                                  | shape        | minivit                         |
| --- | --- | --- |
| embedding/kernel, embedding/bias                                       | (P, P, C, D) | patch_embed.w (D, C, P, P), .b  |
| cls                                                                    | (1, 1, D)    | cls_token                       |
| Transformer/posembed_input/pos_embedding                               | (1, N+1, D)  | pos_embed                       |
| Transformer/encoderblock_i/LayerNorm_0/{scale, bias}                   | (D,)         | blocks.i.norm1.{w, b}           |
| .../MultiHeadDotProductAttention_1/{query, key, value}/kernel          | (D, H, d)    | blocks.i.attn.qkv.w (D, 3D)     |
| .../MultiHeadDotProductAttention_1/{query, key, value}/bias            | (H, d)       | blocks.i.attn.qkv.b (3D,)       |
| .../MultiHeadDotProductAttention_1/out/kernel, out/bias                | (H, d, D)    | blocks.i.attn.proj.w (D, D), .b |
| Transformer/encoderblock_i/LayerNorm_2/{scale, bias}                   | (D,)         | blocks.i.norm2.{w, b}           |
| .../MlpBlock_3/Dense_0/{kernel, bias}, Dense_1/{kernel, bias}          | (D, M), (M, D) | blocks.i.mlp.fc1, fc2         |
| Transformer/encoder_norm/{scale, bias}                                 | (D,)         | norm.{w, b}                     |
| head/kernel, head/bias                                                 | (D, K)       | head.{w, b}                     |

Flax kernels are (in, out), as minivit's, so dense kernels copy over; q, k and v are
concatenated into the fused qkv kernel in minivit's (3, H, d) column order, and the
convolution kernel goes from (P, P, C, D) to (D, C, P, P).
"""
import re
from pathlib import Path

import numpy as np

from ..backend import to_device, to_numpy
from .checkpoint import CheckpointError, npz_layout, refuse_nonfinite, refuse_too_large
from ..config import ConfigError, ViTConfig
from ..atomic_files import atomic_write
from ..models.vit import param_shapes

_BLOCK = "Transformer/encoderblock_{}/"
_ATT = "MultiHeadDotProductAttention_1/"


def load_jax_npz(path, gelu="exact", log=print):
    """-> (params on the configured backend, ViTConfig) from an official ViT .npz.

    The configuration is read off the shapes. `pre_logits` (the extra dense layer of the
    ImageNet-21k pre-training heads) has no place in minivit's model and is dropped with a
    message; any other key minivit does not know is an error that names it. `gelu` says which
    GELU to run the weights with: timm runs them with the exact form; jax.nn.gelu, which Flax
    models call, defaults to the tanh approximation.
    """
    path = Path(path)
    layout = npz_layout(path)      # the arrays' shapes as declared: every check below runs before any is read
    shapes = {k: shape for k, (shape, _) in layout.items()}
    cfg = _config_of(shapes, path, gelu)
    dropped = sorted(k for k in shapes if k.startswith("pre_logits/"))
    if dropped:
        log(f"{path}: dropped {', '.join(dropped)} (a pre-training head layer minivit's model does not have)")
    expected = _official_shapes(cfg)
    unknown = sorted(set(shapes) - set(expected) - set(dropped))
    if unknown:
        raise CheckpointError(f"{path}: keys minivit cannot represent: {', '.join(unknown[:12])}"
                              + (f" and {len(unknown) - 12} more" if len(unknown) > 12 else ""))
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing[:12])}" + (f" and {len(missing) - 12} more"
                                                                             if len(missing) > 12 else ""))
    for k, shape in expected.items():
        if shapes[k] != shape or layout[k][1].kind != "f":
            raise CheckpointError(f"{path}: {k} is {layout[k][1]} of shape {shapes[k]}; the model the file describes "
                                  f"needs floats of shape {shape}")
    refuse_too_large(path, {k: layout[k] for k in expected})
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in expected}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    refuse_nonfinite(path, a)
    p = _params_of(a, cfg)
    return {k: to_device(np.ascontiguousarray(p[k])) for k in param_shapes(cfg)}, cfg


def _config_of(shapes, path, gelu):
    """The ViTConfig an official .npz's arrays describe, read off their declared `shapes`."""
    att, mlp = _BLOCK.format(0) + _ATT, _BLOCK.format(0) + "MlpBlock_3/Dense_0/kernel"
    for required in ("embedding/kernel", "Transformer/posembed_input/pos_embedding", "head/kernel",
                     att + "query/kernel", mlp):
        if required not in shapes:
            raise CheckpointError(f"{path}: no {required!r}; not a ViT checkpoint in the official layout")
    if "cls" not in shapes:
        raise CheckpointError(f"{path}: no 'cls' (class token): a model that pools without a class token cannot be "
                              "represented (minivit's pool='gap' keeps the class token)")
    for key, ndim in (("embedding/kernel", 4), ("Transformer/posembed_input/pos_embedding", 3), ("head/kernel", 2),
                      (att + "query/kernel", 3), (mlp, 2)):
        if len(shapes[key]) != ndim:
            raise CheckpointError(f"{path}: {key} has shape {shapes[key]}; the official layout's has {ndim} axes")
    P, _, C, D = shapes["embedding/kernel"]
    depth = len({m.group(1) for k in shapes for m in [re.match(r"Transformer/encoderblock_(\d+)/", k)] if m})
    heads = shapes[att + "query/kernel"][1]
    mlp_dim = shapes[mlp][1]
    tokens = shapes["Transformer/posembed_input/pos_embedding"][1]
    grid = int(round(max(tokens - 1, 0) ** 0.5))
    if tokens < 2 or grid * grid != tokens - 1:
        raise CheckpointError(f"{path}: {tokens - 1} position rows besides the class token is not a square grid")
    try:
        return ViTConfig(image_size=grid * P, patch_size=P, in_channels=C, num_classes=shapes["head/kernel"][1],
                         dim=D, depth=depth, heads=heads, mlp_dim=mlp_dim, gelu=gelu)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its shapes describe no ViT ({e})") from None


def _official_shapes(cfg):
    """Every key of the official layout with its shape, for the model `cfg` (the table at the top)."""
    P, C, D, H, M, K = cfg.patch_size, cfg.in_channels, cfg.dim, cfg.heads, cfg.mlp_dim, cfg.num_classes
    d = D // H
    shapes = {"embedding/kernel": (P, P, C, D), "embedding/bias": (D,), "cls": (1, 1, D),
              "Transformer/posembed_input/pos_embedding": (1, cfg.num_patches + 1, D),
              "Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,),
              "head/kernel": (D, K), "head/bias": (K,)}
    for i in range(cfg.depth):
        b = _BLOCK.format(i)
        for n in (0, 2):
            shapes[b + f"LayerNorm_{n}/scale"] = shapes[b + f"LayerNorm_{n}/bias"] = (D,)
        for part in ("query", "key", "value"):
            shapes[b + _ATT + part + "/kernel"], shapes[b + _ATT + part + "/bias"] = (D, H, d), (H, d)
        shapes[b + _ATT + "out/kernel"], shapes[b + _ATT + "out/bias"] = (H, d, D), (D,)
        shapes[b + "MlpBlock_3/Dense_0/kernel"], shapes[b + "MlpBlock_3/Dense_0/bias"] = (D, M), (M,)
        shapes[b + "MlpBlock_3/Dense_1/kernel"], shapes[b + "MlpBlock_3/Dense_1/bias"] = (M, D), (D,)
    return shapes


def _params_of(a, cfg):
    """minivit's parameters from an official .npz's arrays `a` (every key checked present)."""
    D = cfg.dim
    p = {"patch_embed.w": a["embedding/kernel"].transpose(3, 2, 0, 1), "patch_embed.b": a["embedding/bias"],
         "cls_token": a["cls"], "pos_embed": a["Transformer/posembed_input/pos_embedding"],
         "norm.w": a["Transformer/encoder_norm/scale"], "norm.b": a["Transformer/encoder_norm/bias"],
         "head.w": a["head/kernel"], "head.b": a["head/bias"]}
    for i in range(cfg.depth):
        b, q = _BLOCK.format(i), f"blocks.{i}."
        p[q + "norm1.w"], p[q + "norm1.b"] = a[b + "LayerNorm_0/scale"], a[b + "LayerNorm_0/bias"]
        p[q + "norm2.w"], p[q + "norm2.b"] = a[b + "LayerNorm_2/scale"], a[b + "LayerNorm_2/bias"]
        qkv = [b + _ATT + part for part in ("query", "key", "value")]
        p[q + "attn.qkv.w"] = np.concatenate([a[k + "/kernel"].reshape(D, D) for k in qkv], axis=1)  # (D, 3D)
        p[q + "attn.qkv.b"] = np.concatenate([a[k + "/bias"].reshape(D) for k in qkv])              # (3D,)
        p[q + "attn.proj.w"] = a[b + _ATT + "out/kernel"].reshape(D, D)                               # (H d, D)
        p[q + "attn.proj.b"] = a[b + _ATT + "out/bias"]
        for n, name in ((0, "fc1"), (1, "fc2")):
            p[q + f"mlp.{name}.w"] = a[b + f"MlpBlock_3/Dense_{n}/kernel"]
            p[q + f"mlp.{name}.b"] = a[b + f"MlpBlock_3/Dense_{n}/bias"]
    return p


def save_jax_npz(path, params, cfg):
    """Write minivit params in the official .npz layout (load_jax_npz reads it back)."""
    if cfg.pos_embed != "learned" or cfg.pos_embed_every_layer or cfg.pool != "token" or cfg.stem_channels \
            or cfg.layer_scale or cfg.head != "classify" or cfg.gelu != "exact" or cfg.ln_eps != 1e-6:
        raise ValueError("save_jax_npz: the official layout holds a learned position embedding, plain blocks and a "
                         f"class-token head; this model has pos_embed={cfg.pos_embed!r}, pool={cfg.pool!r}, "
                         f"layer_scale={cfg.layer_scale}, stem {cfg.stem_channels or 'none'}, head {cfg.head!r}; and the "
                         f"file records neither the GELU form ({cfg.gelu!r}) nor LayerNorm's eps ({cfg.ln_eps:g}), "
                         "which are taken as exact and 1e-6 when read back")
    p = {k: to_numpy(v) for k, v in params.items()}
    D, H = cfg.dim, cfg.heads
    d = D // H
    a = {"embedding/kernel": p["patch_embed.w"].transpose(2, 3, 1, 0), "embedding/bias": p["patch_embed.b"],
         "cls": p["cls_token"], "Transformer/posembed_input/pos_embedding": p["pos_embed"],
         "Transformer/encoder_norm/scale": p["norm.w"], "Transformer/encoder_norm/bias": p["norm.b"],
         "head/kernel": p["head.w"], "head/bias": p["head.b"]}
    for i in range(cfg.depth):
        b, q = _BLOCK.format(i), f"blocks.{i}."
        a[b + "LayerNorm_0/scale"], a[b + "LayerNorm_0/bias"] = p[q + "norm1.w"], p[q + "norm1.b"]
        a[b + "LayerNorm_2/scale"], a[b + "LayerNorm_2/bias"] = p[q + "norm2.w"], p[q + "norm2.b"]
        w, bias = p[q + "attn.qkv.w"].reshape(D, 3, H, d), p[q + "attn.qkv.b"].reshape(3, H, d)
        for j, part in enumerate(("query", "key", "value")):
            a[b + _ATT + part + "/kernel"], a[b + _ATT + part + "/bias"] = w[:, j], bias[j]
        a[b + _ATT + "out/kernel"] = p[q + "attn.proj.w"].reshape(H, d, D)
        a[b + _ATT + "out/bias"] = p[q + "attn.proj.b"]
        for n, name in ((0, "fc1"), (1, "fc2")):
            a[b + f"MlpBlock_3/Dense_{n}/kernel"] = p[q + f"mlp.{name}.w"]
            a[b + f"MlpBlock_3/Dense_{n}/bias"] = p[q + f"mlp.{name}.b"]
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, **{k: np.ascontiguousarray(v) for k, v in a.items()})
    return path

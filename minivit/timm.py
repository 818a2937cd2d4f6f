"""Convert parameters (or gradients) to and from timm's VisionTransformer state_dict.

timm stores Linear weights as (out, in); minivit stores dense kernels as (in, out),
so the names map one to one and the dense weights are transposed. The result
matches `timm.models.vision_transformer.VisionTransformer(img_size=..., patch_size=...,
embed_dim=D, depth=L, num_heads=H, mlp_ratio=M/D, num_classes=K, qkv_bias=True,
global_pool=('token' | 'avg'), fc_norm=False)`: with pool='gap' minivit applies the
final LayerNorm to every token and then averages the patch tokens (the original ViT's
order), which is timm's avg pooling with fc_norm=False.
"""
import numpy as np

from .backend import to_device, to_numpy
from .model import param_shapes, sincos_pos_embed

_LEAF = {"w": "weight", "b": "bias"}


def _timm_name(name):
    if name in ("cls_token", "pos_embed"):
        return name
    if name.startswith("patch_embed."):
        return "patch_embed.proj." + _LEAF[name[-1]]
    stem, leaf = name.rsplit(".", 1)
    return f"{stem}.{_LEAF[leaf]}"


def _is_dense_kernel(name, shape):
    return name.endswith(".w") and len(shape) == 2


def to_timm(params, cfg):
    """minivit params (any backend) -> dict of NumPy arrays keyed and shaped as timm's state_dict."""
    out = {}
    for name, shape in param_shapes(cfg).items():
        a = to_numpy(params[name])
        out[_timm_name(name)] = a.T.copy() if _is_dense_kernel(name, shape) else a
    if "pos_embed" not in out:  # fixed sin-cos: timm still keeps it as a (frozen) tensor
        out["pos_embed"] = sincos_pos_embed(cfg, np, to_numpy(params["cls_token"]).dtype)
    return out


def from_timm(state_dict, cfg):
    """timm state_dict (torch tensors or arrays) -> minivit params on the configured backend.

    Keeps each array's dtype: float64 weights give a float64 model. Raises KeyError or
    ValueError naming the first missing key or mismatched shape.
    """
    params = {}
    for name, shape in param_shapes(cfg).items():
        key = _timm_name(name)
        if key not in state_dict:
            raise KeyError(f"from_timm: state_dict has no {key!r} (needed for minivit {name!r})")
        v = state_dict[key]
        a = v.detach().cpu().numpy() if hasattr(v, "detach") else to_numpy(v)
        dense = _is_dense_kernel(name, shape)
        timm_shape = shape[::-1] if dense else shape
        if a.shape != timm_shape:
            raise ValueError(f"from_timm: {key!r} has shape {a.shape}, the config expects {timm_shape}")
        if dense:
            a = a.T
        params[name] = to_device(np.ascontiguousarray(a))
    return params

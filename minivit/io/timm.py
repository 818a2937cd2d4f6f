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

from ..backend import to_device, to_numpy
from ..layers.posembed import sincos_table as sincos_pos_embed
from ..models.vit import param_shapes

_LEAF = {"w": "weight", "b": "bias", "gamma": "gamma"}  # gamma: LayerScale's ls1/ls2


def _timm_name(name):
    if name in ("cls_token", "pos_embed"):
        return name
    if name.startswith("patch_embed."):
        return "patch_embed.proj." + _LEAF[name[-1]]
    stem, leaf = name.rsplit(".", 1)
    return f"{stem}.{_LEAF[leaf]}"


def _is_dense_kernel(name, shape):
    return name.endswith(".w") and len(shape) == 2


def _check_timm_can_hold(cfg):
    if cfg.head != "classify":
        raise ValueError("timm's VisionTransformer has a class head; this is a masked-patch-prediction model "
                         "(fine-tune it first: `minivit finetune`)")
    if cfg.stem_channels:
        raise ValueError("timm's VisionTransformer has no conv stem; this is a hybrid model (stem_channels "
                         f"{cfg.stem_channels})")
    if cfg.pos_embed not in ("learned", "sincos") or cfg.pos_embed_every_layer:
        raise ValueError(f"timm's VisionTransformer has one learned or sin-cos position table after the stem; "
                         f"this model has pos_embed={cfg.pos_embed!r}, pos_embed_every_layer={cfg.pos_embed_every_layer}")


def to_timm(params, cfg):
    """minivit params (any backend) -> dict of NumPy arrays keyed and shaped as timm's state_dict."""
    _check_timm_can_hold(cfg)
    out = {}
    for name, shape in param_shapes(cfg).items():
        a = to_numpy(params[name])
        out[_timm_name(name)] = a.T.copy() if _is_dense_kernel(name, shape) else a
    if "pos_embed" not in out:  # fixed sin-cos: timm still keeps it as a (frozen) tensor
        out["pos_embed"] = sincos_pos_embed(cfg, np, to_numpy(params["cls_token"]).dtype)
    return out


_WRAPPERS = ("model", "state_dict", "model_state_dict", "module")


def _hint_wrapping(state_dict):
    """A clear error for the two usual ways a checkpoint file wraps its state_dict."""
    keys = list(state_dict)
    for w in _WRAPPERS:
        if w in state_dict and isinstance(state_dict[w], dict):
            raise ValueError(f"from_timm: this looks like a training checkpoint wrapping the weights under "
                             f"{w!r}; pass state_dict[{w!r}] instead")
    if keys and all(k.startswith("module.") for k in keys):
        raise ValueError("from_timm: every key starts with 'module.' (saved from DataParallel or DDP); strip it: "
                         "{k.removeprefix('module.'): v for k, v in state_dict.items()}")


def _as_numpy(key, v):
    """A torch tensor or array -> NumPy array; bfloat16 (which NumPy cannot hold) is widened to float32."""
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()  # exact: every bfloat16 is a float32
        v = v.numpy()
    a = to_numpy(v)
    if a.dtype.kind != "f":
        raise ValueError(f"from_timm: {key!r} has dtype {a.dtype}; weights must be floating point")
    return a


def from_timm(state_dict, cfg):
    """timm state_dict (torch tensors or arrays) -> minivit params on the configured backend.

    Keeps each array's dtype (bfloat16 becomes float32): float64 weights give a float64 model.
    Strict: a missing key, a mismatched shape, or a key minivit does not use (LayerScale's
    `ls1.gamma` when the config has no layer_scale, `q_norm`, `attn_pool`, register tokens ...)
    is an error naming the keys, since
    ignoring weights would silently give wrong logits.
    """
    _hint_wrapping(state_dict)
    _check_timm_can_hold(cfg)
    params, used = {}, set()
    for name, shape in param_shapes(cfg).items():
        key = _timm_name(name)
        if key not in state_dict:
            raise KeyError(f"from_timm: state_dict has no {key!r} (needed for minivit {name!r})")
        a = _as_numpy(key, state_dict[key])
        dense = _is_dense_kernel(name, shape)
        timm_shape = shape[::-1] if dense else shape
        if a.shape != timm_shape:
            raise ValueError(f"from_timm: {key!r} has shape {a.shape}, the config expects {timm_shape}")
        if dense:
            a = a.T
        params[name] = to_device(np.ascontiguousarray(a))
        used.add(key)
    if cfg.pos_embed == "sincos" and "pos_embed" in state_dict:  # timm keeps the fixed table as a tensor
        pe = _as_numpy("pos_embed", state_dict["pos_embed"])
        if pe.shape != (1, cfg.num_patches + 1, cfg.dim) or not np.allclose(pe, sincos_pos_embed(cfg, np, pe.dtype),
                                                                               atol=1e-6):
            raise ValueError("from_timm: 'pos_embed' is not the fixed sin-cos table of pos_embed='sincos'; "
                             "these positions were learned: use pos_embed='learned'")
        used.add("pos_embed")
    unused = sorted(set(state_dict) - used)
    if unused:
        shown = ", ".join(unused[:12]) + (f" and {len(unused) - 12} more" if len(unused) > 12 else "")
        raise ValueError(f"from_timm: the state_dict has weights this ViTConfig does not use: {shown}. "
                         "minivit's ViT has no LayerScale, q/k norms, attention pooling or register tokens; "
                         "ignoring them would give wrong logits")
    return params

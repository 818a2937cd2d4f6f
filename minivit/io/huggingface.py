"""transformers' ViT layout (`ViTForImageClassification`): a folder of config.json, model.safetensors and
preprocessor_config.json. to_hf / from_hf map the weights (transformers keeps q, k and v as three dense
layers, minivit fuses them), hf_config writes the configuration, save_hf the whole folder. The key table is
in docs/formats.md."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_write
from ..backend import to_device, to_numpy
from ..config import ConfigError, ViTConfig
from ..models.vit import param_shapes
from .checkpoint import CheckpointError, refuse_depth_unlike_the_file
from .safetensors_file import _described, write_safetensors

# transformers' hidden_act -> minivit's GELU form
HF_GELU = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}


def _hf_names(cfg):
    """minivit name -> (transformers key, how: 'same', 'T' (transposed dense kernel) or a q/k/v third)."""
    names = {"cls_token": ("vit.embeddings.cls_token", "same"),
             "pos_embed": ("vit.embeddings.position_embeddings", "same"),
             "patch_embed.w": ("vit.embeddings.patch_embeddings.projection.weight", "same"),
             "patch_embed.b": ("vit.embeddings.patch_embeddings.projection.bias", "same"),
             "norm.w": ("vit.layernorm.weight", "same"), "norm.b": ("vit.layernorm.bias", "same"),
             "head.w": ("classifier.weight", "T"), "head.b": ("classifier.bias", "same")}
    for i in range(cfg.depth):
        p, h = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        names.update({p + "norm1.w": (h + "layernorm_before.weight", "same"), p + "norm1.b": (h + "layernorm_before.bias", "same"),
                      p + "norm2.w": (h + "layernorm_after.weight", "same"), p + "norm2.b": (h + "layernorm_after.bias", "same"),
                      p + "attn.proj.w": (h + "attention.output.dense.weight", "T"),
                      p + "attn.proj.b": (h + "attention.output.dense.bias", "same"),
                      p + "mlp.fc1.w": (h + "intermediate.dense.weight", "T"), p + "mlp.fc1.b": (h + "intermediate.dense.bias", "same"),
                      p + "mlp.fc2.w": (h + "output.dense.weight", "T"), p + "mlp.fc2.b": (h + "output.dense.bias", "same")})
    return names


QKV = ("query", "key", "value")   # transformers keeps q, k, v as three dense layers; minivit fuses them


def _check_hf_can_hold(cfg):
    problems = []
    if cfg.pool != "token":
        problems.append("pool='gap' (ViTForImageClassification reads the class token)")
    if cfg.stem_channels:
        problems.append("a conv stem")
    if cfg.pos_embed not in ("learned", "sincos") or cfg.pos_embed_every_layer:
        problems.append(f"pos_embed={cfg.pos_embed!r}, pos_embed_every_layer={cfg.pos_embed_every_layer} "
                        "(transformers keeps one position table, added once)")
    if cfg.layer_scale:
        problems.append("LayerScale")
    if cfg.head != "classify":
        problems.append("the masked-patch-prediction head")
    if problems:
        raise ValueError("transformers' ViTForImageClassification cannot hold this model: " + "; ".join(problems))


def to_hf(params, cfg):
    """minivit params -> transformers' ViTForImageClassification state_dict (NumPy arrays)."""
    from ..layers.posembed import sincos_table
    _check_hf_can_hold(cfg)
    p = {k: to_numpy(v) for k, v in params.items()}
    if cfg.pos_embed == "sincos":   # transformers learns its table; the fixed one is written as its values
        p["pos_embed"] = sincos_table(cfg, np, p["cls_token"].dtype)
    sd = {key: (p[name].T if how == "T" else p[name]) for name, (key, how) in _hf_names(cfg).items()}
    D = cfg.dim
    for i in range(cfg.depth):
        w, b = p[f"blocks.{i}.attn.qkv.w"], p[f"blocks.{i}.attn.qkv.b"]          # (D, 3D), (3D,): q, k, v
        for j, part in enumerate(QKV):
            sd[f"vit.encoder.layer.{i}.attention.attention.{part}.weight"] = w[:, j * D:(j + 1) * D].T
            sd[f"vit.encoder.layer.{i}.attention.attention.{part}.bias"] = b[j * D:(j + 1) * D]
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def hf_config(cfg, classes=None):
    """transformers' config.json for ViTForImageClassification of this model."""
    classes = list(classes) if classes is not None else [str(i) for i in range(cfg.num_classes)]
    gelu = {"exact": "gelu", "tanh": "gelu_pytorch_tanh"}[cfg.gelu]
    return {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": cfg.dim,
            "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.heads, "intermediate_size": cfg.mlp_dim,
            "hidden_act": gelu, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "initializer_range": 0.02, "layer_norm_eps": cfg.ln_eps, "image_size": cfg.image_size,
            "patch_size": cfg.patch_size, "num_channels": cfg.in_channels, "qkv_bias": True,
            "encoder_stride": cfg.patch_size, "torch_dtype": "float32",
            "id2label": {str(i): c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)}}


def save_hf(folder, params, cfg, classes=None, mean=None, std=None):
    """A folder `transformers.ViTForImageClassification.from_pretrained(folder)` loads: config.json,
    model.safetensors and, with the normalisation, preprocessor_config.json (ViTImageProcessor).

    Complete or not at all: the files are written into a new folder beside `folder`, which then takes its
    place, so no file of an earlier export (a preprocessor_config.json of another model) stays behind."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)          # a folder as mkdir makes it, not mkdtemp's private one
    try:
        _write_hf(staging, params, cfg, classes, mean, std)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _write_hf(folder, params, cfg, classes, mean, std):
    write_safetensors(folder / "model.safetensors", {k: v.astype(np.float32) for k, v in to_hf(params, cfg).items()},
                      {"format": "pt", **_described(params, cfg, classes, mean, std)})
    with atomic_write(folder / "config.json") as f:
        f.write(json.dumps(hf_config(cfg, classes), indent=2).encode())
    if mean is not None:
        pre = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": cfg.image_size,
               "width": cfg.image_size}, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255,
               "do_normalize": True, "image_mean": [float(v) for v in mean], "image_std": [float(v) for v in std]}
        with atomic_write(folder / "preprocessor_config.json") as f:
            f.write(json.dumps(pre, indent=2).encode())


def from_hf(sd, config):
    """transformers' ViTForImageClassification weights and config.json -> (params, ViTConfig). Strict."""
    if config.get("model_type") != "vit":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r}; minivit reads 'vit'")
    if config.get("use_mask_token") or "vit.embeddings.mask_token" in sd:
        raise CheckpointError("transformers ViT with a mask token (use_mask_token): minivit's classifier has none")
    if "classifier.weight" not in sd:
        raise CheckpointError("no 'classifier.weight': a ViTModel without a class head; minivit reads "
                              "ViTForImageClassification (fine-tune a head on it in transformers first)")
    if not config.get("qkv_bias", True):
        raise CheckpointError("config.json: qkv_bias false; minivit's attention has q, k and v biases")
    act = config.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in HF_GELU:
        raise CheckpointError(f"config.json: hidden_act {act!r}; minivit has the exact GELU and its tanh form")
    if sd["classifier.weight"].ndim != 2:
        raise CheckpointError(f"transformers weights: 'classifier.weight' has shape {sd['classifier.weight'].shape}, "
                              "not (classes, width)")
    try:
        cfg = ViTConfig(image_size=config["image_size"], patch_size=config["patch_size"],
                        in_channels=config.get("num_channels", 3), num_classes=sd["classifier.weight"].shape[0],
                        dim=config["hidden_size"], depth=config["num_hidden_layers"], heads=config["num_attention_heads"],
                        mlp_dim=config["intermediate_size"], gelu=HF_GELU[act], ln_eps=config.get("layer_norm_eps", 1e-12))
    except KeyError as e:
        raise CheckpointError(f"config.json has no {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"config.json does not describe a ViT minivit can build ({e})") from None
    refuse_depth_unlike_the_file("config.json", cfg, sd, "vit.encoder.layer.")
    names, used, p = _hf_names(cfg), set(), {}
    shapes = param_shapes(cfg)
    for name, (key, how) in names.items():
        if key not in sd:
            raise CheckpointError(f"transformers weights have no {key!r} (needed for minivit {name!r})")
        p[name] = sd[key].T if how == "T" else sd[key]
        used.add(key)
    for i in range(cfg.depth):
        parts = [f"vit.encoder.layer.{i}.attention.attention.{q}." for q in QKV]
        for part in parts:
            for leaf in ("weight", "bias"):
                if part + leaf not in sd:
                    raise CheckpointError(f"transformers weights have no {part + leaf!r}")
                used.add(part + leaf)
        p[f"blocks.{i}.attn.qkv.w"] = np.concatenate([sd[q + "weight"].T for q in parts], axis=1)   # (D, 3D)
        p[f"blocks.{i}.attn.qkv.b"] = np.concatenate([sd[q + "bias"] for q in parts])               # (3D,)
    unused = sorted(set(sd) - used)
    if unused:
        raise CheckpointError(f"transformers weights minivit's ViT would ignore: {', '.join(unused[:8])}"
                              + (f" and {len(unused) - 8} more" if len(unused) > 8 else "") + " (a pooler, LayerScale, ...)")
    for name, shape in shapes.items():
        if p[name].shape != shape:
            raise CheckpointError(f"transformers weights: minivit {name!r} would have shape {p[name].shape}, "
                                  f"config.json says {shape}")
    return {k: to_device(np.ascontiguousarray(p[k])) for k in shapes}, cfg

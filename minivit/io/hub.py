"""Weights in and out of the ecosystem: the Hugging Face Hub's `.safetensors` files in timm's layout
and in transformers' (`ViTForImageClassification`), and one loader for every format minivit reads.

    load_pretrained(path) -> (params, cfg, info)   a timm .safetensors, a transformers folder
                                                   (config.json + model.safetensors), an official
                                                   .npz or a minivit checkpoint, told apart by their keys
    save_timm(path, params, cfg, ...)              timm's state_dict layout, metadata {"format": "pt"}
    save_hf(folder, params, cfg, ...)              config.json, model.safetensors, preprocessor_config.json

The key tables of every layout are side by side in docs/formats.md. Reading is strict, as from_timm
is: a key minivit would ignore (register tokens, a mask token, a pooler, LayerScale where there is
none) or a shape the inferred configuration does not have is an error that names it, since ignoring
weights gives wrong logits. No torch is needed: `safetensors` reads and writes NumPy arrays.
"""
import json
import re
import struct
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_write
from ..backend import to_device, to_numpy
from ..config import ViTConfig
from ..models.vit import param_shapes
from .checkpoint import CheckpointError, load_checkpoint
from .jax_npz import load_jax_npz
from .timm import from_timm, to_timm

# The heads of the paper's and DeiT's models by width (timm's files do not record them): Ti, S, B, L, H.
HEADS_BY_DIM = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# transformers' hidden_act -> minivit's GELU form
HF_GELU = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise CheckpointError("reading or writing .safetensors needs the safetensors package: "
                              "pip install safetensors") from None
    return safetensors.numpy


# ---------------------------------------------------------------- .safetensors files

def read_safetensors(path, bfloat16=False):
    """-> ({name: NumPy array}, metadata dict) of a .safetensors file.

    bfloat16 weights, which NumPy cannot hold, are refused unless `bfloat16=True`, which widens
    them to float32 (exactly: every bfloat16 is a float32 with 16 more zero bits)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from None
    meta = header.pop("__metadata__", None) or {}
    bf16 = sorted(k for k, v in header.items() if v.get("dtype") == "BF16")
    if bf16 and not bfloat16:
        raise CheckpointError(f"{path}: {len(bf16)} bfloat16 tensors ({', '.join(bf16[:3])}, ...), which NumPy cannot "
                              "hold; ask for the conversion to float32 (load_pretrained(..., bfloat16=True), "
                              "--bfloat16 on finetune and export)")
    if not bf16:
        try:
            return _safetensors().load_file(str(path)), meta
        except Exception as e:  # a truncated file, an unknown dtype
            raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from None
    raw = path.read_bytes()[8 + n:]
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            bits = np.frombuffer(raw[a:b], dtype="<u2").astype(np.uint32) << 16
            out[k] = bits.view(np.float32).reshape(v["shape"])
        elif v["dtype"] in _DTYPES:
            out[k] = np.frombuffer(raw[a:b], dtype=np.dtype(_DTYPES[v["dtype"]]).newbyteorder("<")).reshape(v["shape"]).copy()
        else:
            raise CheckpointError(f"{path}: {k!r} has dtype {v['dtype']}; weights must be floating point")
    return out, meta


def write_safetensors(path, tensors, metadata):
    """Write NumPy arrays to a .safetensors file, all at once or not at all (minivit/atomic_files.py)."""
    data = _safetensors().save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                               metadata={k: str(v) for k, v in metadata.items()})
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def _described(params, cfg, classes=None, mean=None, std=None):
    """What minivit writes into a file's metadata so that it can read its own files back whole."""
    info = {"minivit_config": json.dumps(cfg.to_dict())}
    if classes is not None:
        info["classes"] = json.dumps(list(classes))
    if mean is not None:
        info["mean"], info["std"] = json.dumps([float(v) for v in mean]), json.dumps([float(v) for v in std])
    return info


# ---------------------------------------------------------------- timm's layout

def save_timm(path, params, cfg, classes=None, mean=None, std=None):
    """timm's VisionTransformer state_dict as a .safetensors file (`timm.create_model(name,
    checkpoint_path=...)` or `load_state_dict(strict=True)` loads it), float32, metadata {"format": "pt"}."""
    tensors = {k: v.astype(np.float32) for k, v in to_timm(params, cfg).items()}
    return write_safetensors(path, tensors, {"format": "pt", **_described(params, cfg, classes, mean, std)})


def timm_config(sd, meta, heads=None):
    """The ViTConfig of a timm state_dict: from minivit's metadata when the file is minivit's, else
    read off the shapes (the heads from `heads` or HEADS_BY_DIM, the pool 'token')."""
    refused = sorted(k for k in sd if k.startswith(("reg_token", "dist_token", "head_dist", "fc_norm", "attn_pool")))
    if refused:
        raise CheckpointError(f"timm weights minivit cannot represent: {', '.join(refused)} (register or distillation "
                              "tokens, attention pooling, or a LayerNorm after average pooling)")
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight", "blocks.0.mlp.fc1.weight"):
        if key not in sd:
            raise CheckpointError(f"timm weights without {key!r}: minivit loads a VisionTransformer with a class "
                                  "token, a position table and a class head")
    if "minivit_config" in meta:
        return ViTConfig.from_dict(json.loads(meta["minivit_config"]))
    D, C, P, _ = sd["patch_embed.proj.weight"].shape
    tokens = sd["pos_embed"].shape[1]
    grid = int(round((tokens - 1) ** 0.5))
    if grid * grid != tokens - 1:
        raise CheckpointError(f"timm weights: {tokens - 1} position rows besides the class token is not a square grid")
    heads = heads or HEADS_BY_DIM.get(D)
    if heads is None:
        raise CheckpointError(f"timm weights of width {D}: the file does not say how many attention heads; "
                              "pass heads=H (--heads H on finetune and export)")
    depth = len({m.group(1) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    gamma = sd.get("blocks.0.ls1.gamma")
    return ViTConfig(image_size=grid * P, patch_size=P, in_channels=C, num_classes=sd["head.weight"].shape[0], dim=D,
                     depth=depth, heads=heads, mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0],
                     layer_scale=float(np.abs(gamma).mean()) if gamma is not None else 0.0)


# ---------------------------------------------------------------- transformers' layout (ViTForImageClassification)

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
    model.safetensors and, with the normalisation, preprocessor_config.json (ViTImageProcessor)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
    return folder


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
    if act not in HF_GELU:
        raise CheckpointError(f"config.json: hidden_act {act!r}; minivit has the exact GELU and its tanh form")
    try:
        cfg = ViTConfig(image_size=config["image_size"], patch_size=config["patch_size"],
                        in_channels=config.get("num_channels", 3), num_classes=sd["classifier.weight"].shape[0],
                        dim=config["hidden_size"], depth=config["num_hidden_layers"], heads=config["num_attention_heads"],
                        mlp_dim=config["intermediate_size"], gelu=HF_GELU[act], ln_eps=config.get("layer_norm_eps", 1e-12))
    except KeyError as e:
        raise CheckpointError(f"config.json has no {e}") from None
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


# ---------------------------------------------------------------- one loader

def _metadata_info(meta, config=None, preprocessor=None):
    """Class names and normalisation, where the file records them."""
    info = {}
    if "classes" in meta:
        info["classes"] = json.loads(meta["classes"])
    elif config and "id2label" in config:
        try:
            info["classes"] = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        except KeyError:
            raise CheckpointError("config.json: id2label does not number its classes 0 .. K-1") from None
    if "mean" in meta:
        info["mean"], info["std"] = json.loads(meta["mean"]), json.loads(meta["std"])
    elif preprocessor and preprocessor.get("do_normalize", True) and "image_mean" in preprocessor:
        info["mean"], info["std"] = preprocessor["image_mean"], preprocessor["image_std"]
    return info


def load_pretrained(path, heads=None, bfloat16=False, log=print, require=()):
    """(params, cfg, info) from any file minivit reads, told apart by what it holds:

    - a folder with config.json and model.safetensors: transformers' ViTForImageClassification;
    - a .safetensors: timm's layout (or transformers', with its config.json beside it);
    - a .npz: a minivit checkpoint (it has 'meta') or the official google-research layout.

    `info` holds what the file records of the data: 'classes', 'mean' and 'std' (absent where it
    records none), and for a minivit checkpoint the 'data' it was trained on. `heads`: timm's files do
    not say; HEADS_BY_DIM gives the paper's models'. `require`: metadata a minivit checkpoint must
    hold (load_checkpoint's)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: a folder without config.json; expected a transformers model folder")
        return _load_hf(path / "model.safetensors", path / "config.json", bfloat16)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    if path.suffix == ".safetensors":
        sd, meta = read_safetensors(path, bfloat16)
        if any(k.startswith(("vit.", "embeddings.")) for k in sd):
            return _load_hf(path, path.parent / "config.json", bfloat16, (sd, meta))
        if not any(k.startswith("blocks.") for k in sd):
            raise CheckpointError(f"{path}: neither timm's ViT keys (blocks.0...) nor transformers' (vit.encoder...)")
        cfg = timm_config(sd, meta, heads)
        try:
            params = from_timm(sd, cfg)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from None
        return params, cfg, _metadata_info(meta)
    try:
        with np.load(path, allow_pickle=False) as z:
            ours = "meta" in z.files
    except Exception as e:
        raise CheckpointError(f"{path}: not a .safetensors, .npz or model folder minivit can read "
                              f"({type(e).__name__}: {e})") from None
    if ours:
        params, cfg, _, meta = load_checkpoint(path, require=require, family="vit")
        return params, cfg, {k: meta[k] for k in ("classes", "mean", "std", "data") if k in meta}
    params, cfg = load_jax_npz(path, log=log)
    return params, cfg, {}


def _load_hf(weights, config_path, bfloat16, loaded=None):
    if not config_path.is_file():
        raise CheckpointError(f"{weights}: transformers' layout, but no config.json beside it")
    sd, meta = loaded or read_safetensors(weights, bfloat16)
    sd = {("vit." + k if k.startswith(("embeddings.", "encoder.", "layernorm.")) else k): v for k, v in sd.items()}
    config = json.loads(config_path.read_text())
    pre_path = config_path.parent / "preprocessor_config.json"
    pre = json.loads(pre_path.read_text()) if pre_path.is_file() else None
    params, cfg = from_hf(sd, config)
    info = _metadata_info(meta, config, pre)
    if len(info.get("classes", [None] * cfg.num_classes)) != cfg.num_classes:
        raise CheckpointError(f"config.json: id2label names {len(info['classes'])} classes, the classifier has "
                              f"{cfg.num_classes}")
    return params, cfg, info

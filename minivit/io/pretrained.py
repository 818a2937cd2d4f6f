"""One loader for every weights file minivit reads, told apart by what it holds: a timm .safetensors, a
transformers folder (config.json + model.safetensors), an official google-research .npz, or a minivit
checkpoint.

    load_pretrained(path) -> (params, cfg, info)   info: the classes and normalisation the file records

Reading is strict, as from_timm is: a key minivit would ignore (register tokens, a mask token, a pooler,
LayerScale where there is none) or a shape the inferred configuration does not have is an error that
names it, since ignoring weights gives wrong logits. No torch is needed. Writing: io/safetensors_file.py
(timm's layout), io/huggingface.py (transformers'), io/jax_npz.py, io/onnx_graph.py; docs/formats.md.
"""
from pathlib import Path

import numpy as np

from ..config import is_number
from .checkpoint import CheckpointError, json_from, load_checkpoint
from .huggingface import from_hf
from .jax_npz import load_jax_npz
from .safetensors_file import read_safetensors, timm_config
from .timm import from_timm


def _metadata_info(meta, config=None, preprocessor=None):
    """Class names and normalisation, where the file records them (their types: check_loaded)."""
    info = {}
    if "classes" in meta:
        info["classes"] = _json_field(meta, "classes")
    elif config and "id2label" in config:
        labels = config["id2label"]
        if not isinstance(labels, dict):
            raise CheckpointError(f"config.json: id2label must map class numbers to names, got {type(labels).__name__}")
        try:
            info["classes"] = [labels[str(i)] for i in range(len(labels))]
        except KeyError:
            raise CheckpointError("config.json: id2label does not number its classes 0 .. K-1") from None
    if "mean" in meta or "std" in meta:
        info.update({k: _json_field(meta, k) for k in ("mean", "std") if k in meta})
    elif preprocessor and preprocessor.get("do_normalize", True) and ("image_mean" in preprocessor
                                                                     or "image_std" in preprocessor):
        info.update({k: preprocessor[f"image_{k}"] for k in ("mean", "std") if f"image_{k}" in preprocessor})
    return info


def _json_field(meta, key):
    """A metadata string that holds JSON (the class names, the mean, the std), parsed."""
    return json_from(meta[key], f"its metadata's {key!r}")


def _read_json(path, what):
    """A JSON object from a small file beside the weights (config.json, preprocessor_config.json)."""
    _regular(path)
    if path.stat().st_size > 10_000_000:
        raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes, not a {what}")
    value = json_from(path.read_bytes(), str(path))
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: a {what} is a JSON object, this is a {type(value).__name__}")
    return value


def load_pretrained(path, heads=None, bfloat16=False, log=print, require=()):
    """(params, cfg, info) from any file minivit reads (_load_any), refused in one CheckpointError when a weight
    is NaN or infinite (each format's reader checks its arrays as it reads them), or the recorded
    normalisation or class names cannot be what the model needs."""
    try:
        params, cfg, info = _load_any(path, heads, bfloat16, log, require)
        check_loaded(path, cfg, info)
    except CheckpointError as e:   # every message names the file it is about
        if str(path) in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError, OverflowError) as e:
        # what no check above foresaw in a hostile file: still one line that names it (the cause stays chained)
        raise CheckpointError(f"{path}: a malformed weights file ({type(e).__name__}: {e})") from e
    return params, cfg, info


def check_loaded(path, cfg, info):
    """What every format must give beside finite weights: a finite mean and a positive finite std of one value
    per input channel, and class names (strings) one per class."""
    if ("mean" in info) != ("std" in info):
        raise CheckpointError(f"{path}: records a {'mean' if 'mean' in info else 'std'} without the other")
    if "mean" in info:
        if not all(isinstance(info[k], list) and all(is_number(v) for v in info[k]) for k in ("mean", "std")):
            raise CheckpointError(f"{path}: the normalisation's mean and std must be lists of numbers, got "
                                  f"{str(info['mean'])[:40]} and {str(info['std'])[:40]}")
        mean, std = np.asarray(info["mean"], dtype=np.float64), np.asarray(info["std"], dtype=np.float64)
        C = cfg.in_channels
        if mean.shape != (C,) or std.shape != (C,):
            raise CheckpointError(f"{path}: the normalisation has mean {mean.shape} and std {std.shape}; the model "
                                  f"reads {C} channels")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise CheckpointError(f"{path}: the normalisation must be finite with a positive std, got mean "
                                  f"{mean.tolist()} and std {std.tolist()}")
    classes = info.get("classes")
    if classes is not None and cfg.head == "classify" and (
            not isinstance(classes, list) or len(classes) != cfg.num_classes or not all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: the class names must be {cfg.num_classes} strings, one per class of the head")


def _load_any(path, heads=None, bfloat16=False, log=print, require=()):
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
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    _regular(path)
    if path.suffix == ".safetensors":
        sd, meta = read_safetensors(path, bfloat16)
        if any(k.startswith(("vit.", "embeddings.")) for k in sd):
            return _load_hf(path, path.parent / "config.json", bfloat16, (sd, meta))
        if not any(k.startswith("blocks.") for k in sd):
            raise CheckpointError(f"{path}: neither timm's ViT keys (blocks.0...) nor transformers' (vit.encoder...)")
        cfg = timm_config(sd, meta, heads)   # (its errors get the path from load_pretrained)
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


def _regular(path):
    """Refuse anything but a regular file (a FIFO would block the read, a device never ends)."""
    import stat
    try:
        mode = path.stat().st_mode          # follows links: a link to a FIFO is refused too
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file (a pipe, a device or a socket); give a weights file")


def _load_hf(weights, config_path, bfloat16, loaded=None):
    if not config_path.is_file():
        raise CheckpointError(f"{weights}: transformers' layout, but no config.json beside it")
    if loaded is None:
        if not weights.exists():
            raise CheckpointError(f"{weights.parent}: no model.safetensors beside config.json")
        _regular(weights)
    sd, meta = loaded or read_safetensors(weights, bfloat16)
    sd = {("vit." + k if k.startswith(("embeddings.", "encoder.", "layernorm.")) else k): v for k, v in sd.items()}
    config = _read_json(config_path, "transformers config")
    pre_path = config_path.parent / "preprocessor_config.json"
    pre = _read_json(pre_path, "preprocessor config") if pre_path.exists() else None
    params, cfg = from_hf(sd, config)
    info = _metadata_info(meta, config, pre)
    if isinstance(info.get("classes"), list) and len(info["classes"]) != cfg.num_classes:
        raise CheckpointError(f"config.json: id2label names {len(info['classes'])} classes, the classifier has "
                              f"{cfg.num_classes}")
    return params, cfg, info

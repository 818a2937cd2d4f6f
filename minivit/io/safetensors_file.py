"""The `.safetensors` file (the Hugging Face Hub's weights format: a JSON header, then raw little-endian
arrays), read and written without torch, and timm's ViT layout in it: save_timm writes minivit's weights
as timm's state_dict with metadata {"format": "pt"}, timm_config reads a model's configuration off a
timm file's shapes. The key tables are in docs/formats.md; io/timm.py maps the names."""
import json
import math
import re
import struct
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_write
from ..config import ConfigError, ViTConfig
from .checkpoint import CheckpointError, json_from, refuse_depth_unlike_the_file, refuse_nonfinite
from .timm import to_timm

# The heads of the paper's and DeiT's models by width (timm's files do not record them): Ti, S, B, L, H.
HEADS_BY_DIM = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise CheckpointError("reading or writing .safetensors needs the safetensors package: "
                              "pip install safetensors") from None
    return safetensors.numpy


# The safetensors format's own bound on the header (its Rust reader refuses more).
HEADER_LIMIT = 100_000_000
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def read_header(path):
    """-> (tensors: {name: {dtype, shape, data_offsets}}, metadata: {str: str}, where the data starts), every
    field checked against the format and the file's own length before anything is read or allocated: the
    header's length, its JSON, each entry's types, its offsets inside the data and their size against its
    shape. A file that fails is one CheckpointError naming the file and the entry."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes, too short for a .safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, HEADER_LIMIT):
            raise CheckpointError(f"{path}: not a .safetensors file: its header length field says {n:,} bytes, the file "
                                  f"has {size - 8:,} after it (and the format allows {HEADER_LIMIT:,})")
        text = f.read(n)
    header = json_from(text, f"{path}: the .safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the .safetensors header must be a JSON object, got {type(header).__name__}")
    meta = header.pop("__metadata__", None) or {}
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path}: the header's __metadata__ must map names to strings, got {_short(meta)}")
    data = size - 8 - n
    spans = []
    for name, entry in header.items():
        spans.append(_check_entry(path, name, entry, data))
    spans.sort()
    for (a, b, x), (c, _, y) in zip(spans, spans[1:]):
        if c < b:
            raise CheckpointError(f"{path}: tensors {x!r} and {y!r} overlap in the file's data")
    return header, meta, 8 + n


def _check_entry(path, name, entry, data):
    """One header entry of a tensor: its dtype, shape and offsets, and their agreement. -> (start, end, name)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: its header entry must be an object, got {_short(entry)}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise CheckpointError(f"{where}: dtype must be a name, got {_short(dtype)}")
    if dtype not in _ITEMSIZE:
        raise CheckpointError(f"{where} has dtype {dtype}; weights must be floating point (F16, BF16, F32, F64)")
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if not (isinstance(shape, list) and all(whole(d) for d in shape)):
        raise CheckpointError(f"{where}: shape must be a list of whole numbers, got {_short(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(whole(o) for o in offsets)
            and offsets[0] <= offsets[1] <= data):
        raise CheckpointError(f"{where}: data_offsets must be two whole numbers within the file's {data:,} data "
                              f"bytes, got {_short(offsets)}")
    need = math.prod(shape) * _ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != need:
        raise CheckpointError(f"{where}: {dtype} of shape {shape} takes {need:,} bytes, its offsets span "
                              f"{offsets[1] - offsets[0]:,}")
    return offsets[0], offsets[1], name


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_safetensors(path, bfloat16=False):
    """-> ({name: NumPy array}, metadata dict) of a .safetensors file, its header checked first (read_header).

    bfloat16 weights, which NumPy cannot hold, are refused unless `bfloat16=True`, which widens
    them to float32 (exactly: every bfloat16 is a float32 with 16 more zero bits)."""
    path = Path(path)
    try:
        header, meta, start = read_header(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    bf16 = sorted(k for k, v in header.items() if v["dtype"] == "BF16")
    if bf16 and not bfloat16:
        raise CheckpointError(f"{path}: {len(bf16)} bfloat16 tensors ({', '.join(bf16[:3])}, ...), which NumPy cannot "
                              "hold; ask for the conversion to float32 (load_pretrained(..., bfloat16=True), "
                              "--bfloat16 on finetune and export)")
    if not bf16:
        try:
            out = _safetensors().load_file(str(path))
        except Exception as e:  # what the header check cannot see
            raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from None
        refuse_nonfinite(path, out)
        return out, meta
    raw = path.read_bytes()[start:]
    out = {}
    for k, v in header.items():   # every entry's dtype, shape and offsets agree (read_header)
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            bits = np.frombuffer(raw[a:b], dtype="<u2").astype(np.uint32) << 16
            out[k] = bits.view(np.float32).reshape(v["shape"])
        else:
            out[k] = np.frombuffer(raw[a:b], dtype=np.dtype(_DTYPES[v["dtype"]]).newbyteorder("<")).reshape(v["shape"]).copy()
    refuse_nonfinite(path, out)
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
        try:
            cfg = ViTConfig.from_dict(json.loads(meta["minivit_config"]))
        except RecursionError:
            raise CheckpointError("its minivit_config metadata is nested too deep to be a config") from None
        except ValueError as e:   # JSON that is not, and ConfigError
            raise CheckpointError(f"its minivit_config metadata is not a model config ({e})") from None
        refuse_depth_unlike_the_file("its minivit_config", cfg, sd, "blocks.")
        return cfg
    for key, ndim in (("patch_embed.proj.weight", 4), ("pos_embed", 3), ("head.weight", 2),
                      ("blocks.0.mlp.fc1.weight", 2)):
        if sd[key].ndim != ndim:
            raise CheckpointError(f"timm weights: {key!r} has shape {sd[key].shape}; timm's has {ndim} axes")
    D, C, P, _ = sd["patch_embed.proj.weight"].shape
    tokens = sd["pos_embed"].shape[1]
    grid = int(round(max(tokens - 1, 0) ** 0.5))
    if tokens < 2 or grid * grid != tokens - 1:
        raise CheckpointError(f"timm weights: {tokens - 1} position rows besides the class token is not a square grid")
    heads_given = heads is not None
    heads = heads or HEADS_BY_DIM.get(D)
    if heads is None:
        raise CheckpointError(f"timm weights of width {D}: the file does not say how many attention heads; "
                              "pass heads=H (--heads H on finetune and export)")
    depth = len({m.group(1) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    gamma = sd.get("blocks.0.ls1.gamma")
    try:
        return ViTConfig(image_size=grid * P, patch_size=P, in_channels=C, num_classes=sd["head.weight"].shape[0],
                         dim=D, depth=depth, heads=heads, mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0],
                         layer_scale=float(np.abs(gamma).mean()) if gamma is not None else 0.0)
    except ConfigError as e:   # most often heads that do not divide the width: the user's --heads, or the file
        source = "given by --heads" if heads_given else "the paper's for this width"
        raise CheckpointError(f"timm weights of width {D} with {heads} heads ({source}) describe no ViT: {e}") from None

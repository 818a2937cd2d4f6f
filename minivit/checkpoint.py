"""Checkpoints: one .npz file, never a pickle, written atomically.

Arrays are stored under 'param/<name>' and 'opt/<key>'; everything else (model and
training config, step, seed, normalisation, class names) is one JSON string under
'meta'. np.load(..., allow_pickle=False) reads it, so loading cannot run code.
"""
import json
import os
from pathlib import Path

import numpy as np

from .backend import to_device, to_numpy
from .config import ConfigError, ViTConfig
from .model import param_shapes

FORMAT = "minivit-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted or does not fit the model."""


def save_checkpoint(path, params, cfg, opt_state=None, meta=None):
    """Write params (+ optimiser state and metadata) to `path` atomically.

    The file is written beside its destination and renamed over it in one step
    (os.replace), so a crash mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    arrays = {"param/" + k: to_numpy(v) for k, v in params.items()}
    scalars = {}
    for k, v in (opt_state or {}).items():
        if hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
            arrays["opt/" + k] = to_numpy(v)
        else:
            scalars[k] = int(v) if float(v).is_integer() else float(v)
    info = {"format": FORMAT, "config": cfg.to_dict(), "opt_scalars": scalars, **(meta or {})}
    arrays["meta"] = np.array(json.dumps(info))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # the PID: no two writers share a temporary
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only folder, a file where the folder should be
        tmp.unlink(missing_ok=True)  # never leave a partial file behind to fill the disk
        kept = "; the previous checkpoint is kept" if path.is_file() else ""
        raise CheckpointError(f"could not write checkpoint {path} ({e.strerror or e}){kept}") from None
    return path


def load_checkpoint(path, cfg=None):
    """-> (params on the configured backend, ViTConfig, optimiser state dict, meta dict).

    With `cfg`, refuses a checkpoint whose model configuration differs, naming the fields.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except Exception as e:  # zipfile.BadZipFile, KeyError, ValueError, EOFError ...
        raise CheckpointError(f"{path}: not a readable minivit checkpoint ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    try:
        saved = ViTConfig.from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from None
    if cfg is not None and cfg != saved:
        diff = [f"{k}: checkpoint {v!r}, requested {getattr(cfg, k)!r}"
                for k, v in saved.to_dict().items() if getattr(cfg, k) != v]
        raise CheckpointError(f"{path}: checkpoint is for a different model ({'; '.join(diff)})")
    params = {}
    for name, shape in param_shapes(saved).items():
        a = arrays.get("param/" + name)
        if a is None or a.shape != shape:
            raise CheckpointError(f"{path}: parameter {name!r} missing or of the wrong shape")
        params[name] = to_device(a)
    opt_state = {k[4:]: to_device(v) for k, v in arrays.items() if k.startswith("opt/")}
    opt_state.update(meta.pop("opt_scalars", {}))
    return params, saved, opt_state, meta

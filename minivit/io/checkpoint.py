"""Checkpoints: one .npz file, never a pickle, written atomically.

Arrays are stored under 'param/<name>' and 'opt/<key>'; everything else (model and
training config, step, seed, normalisation, class names) is one JSON string under
'meta'. np.load(..., allow_pickle=False) reads it, so loading cannot run code.
"""
import json
from pathlib import Path

import numpy as np

from ..backend import to_device, to_numpy
from ..config import ConfigError, TrainConfig, is_number
from ..atomic_files import atomic_write

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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:  # a crash mid-write leaves the previous checkpoint (minivit/atomic_files.py)
            np.savez(f, **arrays)
    except OSError as e:  # a full disk, a read-only folder, a file where the folder should be
        kept = "; the previous checkpoint is kept" if path.is_file() else ""
        raise CheckpointError(f"could not write checkpoint {path} ({e.strerror or e}){kept}") from None
    return path


def _meta_problems(meta, cfg, require):
    """What is wrong with the metadata: a list of messages (empty when it is well-formed)."""
    problems = [f"missing {k!r}" for k in require if k not in meta]
    for k in ("mean", "std"):
        v = meta.get(k)
        if k in meta and not (isinstance(v, list) and len(v) == cfg.in_channels and all(is_number(x) for x in v)):
            problems.append(f"{k!r} must be a list of {cfg.in_channels} numbers, got {v!r}")
    if "std" in meta and not problems and not all(x > 0 for x in meta["std"]):
        problems.append(f"'std' must be positive, got {meta['std']!r}")
    if "step" in meta and not (isinstance(meta["step"], int) and not isinstance(meta["step"], bool) and meta["step"] >= 0):
        problems.append(f"'step' must be a whole number >= 0, got {meta['step']!r}")
    if "classes" in meta:
        c = meta["classes"]
        if not (isinstance(c, list) and len(c) == cfg.num_classes and all(isinstance(x, str) for x in c)):
            problems.append(f"'classes' must be a list of {cfg.num_classes} names, got {c!r}")
    if "train_config" in meta:
        try:
            TrainConfig(**meta["train_config"])
        except (TypeError, ValueError) as e:
            problems.append(f"'train_config' is not a training configuration ({e})")
    return problems


def json_from(text, what):
    """Untrusted JSON text (a file's header, config or metadata) parsed, or one CheckpointError saying `what`
    it was (the file's name in it): JSON that is not, or that nests too deep for Python's parser."""
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{what} is nested too deep to be read") from None
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{what} is not JSON ({e})") from None


def npz_layout(path, what=".npz"):
    """{name: (shape, dtype)} of an .npz's arrays, read from each member's .npy header alone: nothing is
    decompressed or allocated, so what a file declares can be checked against what it should hold first
    (a 10 MB file may declare an 8 GiB array). Raises a CheckpointError for a file that is no .npz."""
    import zipfile
    from numpy.lib import format as npy
    layout = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = npy.read_magic(f)
                    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    try:
                        shape, _, dtype = read(f, max_header_size=10_000)
                    except TypeError:   # NumPy before 1.23.5 has no such bound (and reads any header)
                        shape, _, dtype = read(f)
                layout[info.filename[:-4]] = (tuple(shape), dtype)
    except Exception as e:  # zipfile.BadZipFile, a bad magic or header, a compression method zipfile lacks
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
    return layout


def declared_bytes(layout):
    """Bytes the arrays of an npz_layout take once read."""
    return sum(int(np.prod(shape, dtype=object)) * dtype.itemsize for shape, dtype in layout.values())


def refuse_too_large(path, layout):
    """Refuse a file whose arrays would not fit in the memory available now, before any is read."""
    from ..machine import available_memory
    need, free = declared_bytes(layout), available_memory()
    if free is not None and need > free:
        raise CheckpointError(f"{path}: declares arrays of {need / 1e9:,.1f} GB, more than the {free / 1e9:.1f} GB "
                              "of memory available; not read")


def refuse_nonfinite(path, arrays):
    """Raise a CheckpointError naming the first of `arrays` ({name: NumPy array}, as a weights file holds them)
    with a NaN or an infinity: weights read from any format are checked once, on the host, as they are read."""
    bad = next((k for k, v in arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{path}: {bad!r} holds NaN or infinite values")


def _array_problems(path, layout, shapes):
    """What is wrong with a checkpoint's parameters and optimiser state as declared (npz_layout: shapes and
    dtypes, nothing read yet), given the model's `shapes` (a missing or misshapen parameter is raised at once:
    nothing else can be checked against it)."""
    problems = []
    for name, shape in shapes.items():
        declared = layout.get("param/" + name)
        if declared is None or declared[0] != shape:
            raise CheckpointError(f"{path}: parameter {name!r} missing or of the wrong shape")
        if declared[1].kind != "f":
            problems.append(f"parameter {name!r} has dtype {declared[1]}, not a floating-point type")
    unknown = sorted(k for k in layout if k.startswith("param/") and k[6:] not in shapes)
    if unknown:
        problems.append(f"unknown parameters {', '.join(k[6:] for k in unknown)}")
    for k, (shape, dtype) in layout.items():
        if k.startswith("opt/"):
            _, _, name = k[4:].partition(".")  # 'm.blocks.0.attn.qkv.w' -> the parameter's name
            if name not in shapes or shape != shapes[name] or dtype.kind != "f":
                problems.append(f"optimiser state {k[4:]!r} does not fit parameter {name!r} "
                                f"(shape {shape}, dtype {dtype})")
    other = sorted(k for k in layout if k != "meta" and not k.startswith(("param/", "opt/")))
    if other:
        problems.append(f"arrays that are neither parameters nor optimiser state: {', '.join(other[:8])}")
    return problems


def refuse_depth_unlike_the_file(path, cfg, names, prefix):
    """A config read from a file declares the model's depth, and the file's own keys say how many blocks it
    holds (`prefix`: where a block's names start, 'blocks.'). They must agree before anything per block is
    built: a declared 10^9 layers would otherwise build tables of 10^9 entries."""
    depth = getattr(cfg, "depth", None)   # (a CNN's config has none)
    held = len({n[len(prefix):].split(".", 1)[0] for n in names if n.startswith(prefix)})
    if depth is not None and depth != held:
        raise CheckpointError(f"{path}: its config says {depth:,} blocks but the file holds weights for {held}")


# A checkpoint's metadata is its config, settings, classes and history: kilobytes. Anything declaring more is refused
# before it is read.
META_LIMIT = 64 * 2 ** 20


def _read_meta(path, layout):
    """The checkpoint's metadata (the JSON string under 'meta'), a dict."""
    if "meta" not in layout:
        raise CheckpointError(f"{path}: not a minivit checkpoint (no 'meta')")
    if declared_bytes({"meta": layout["meta"]}) > META_LIMIT or layout["meta"][1].kind != "U":
        raise CheckpointError(f"{path}: its 'meta' is not a JSON text of reasonable size ({layout['meta'][1]}, "
                              f"shape {layout['meta'][0]})")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
    except Exception as e:  # a corrupted member, JSON that is not, nested too deep
        raise CheckpointError(f"{path}: not a readable minivit checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'meta' must be a JSON object, got {type(meta).__name__}")
    return meta


def load_checkpoint(path, cfg=None, require=(), family=None):
    """-> (params on the configured backend, model config, optimiser state dict, meta dict).

    The config is a ViTConfig, or a CNNConfig for the comparison CNN (minivit/models/cnn.py); `family`
    ("vit" or "cnn") refuses the other kind. With `cfg`, refuses a checkpoint whose model
    configuration differs, naming the fields.
    Every part is validated (parameters: shape, floating dtype, finite values; optimiser state:
    shapes; metadata: types), and `require` names metadata keys the caller needs; each problem
    found is listed in one CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    layout = npz_layout(path, "minivit checkpoint")   # what the file declares: checked before any array is read
    meta = _read_meta(path, layout)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    from ..models.families import config_from_dict, family_of
    if "config" not in meta:
        raise CheckpointError(f"{path}: invalid checkpoint: its metadata holds no model 'config'")
    try:
        saved = config_from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from None
    kind, want = family_of(saved).name, family_of(cfg).name if cfg is not None else family
    if want is not None and kind != want:
        names = {"vit": "ViT", "cnn": "CNN"}
        raise CheckpointError(f"{path}: this is a {names[kind]} checkpoint; a {names.get(want, want)} one is needed here")
    if cfg is not None and cfg != saved:
        diff = [f"{k}: checkpoint {v!r}, requested {getattr(cfg, k)!r}"
                for k, v in saved.to_dict().items() if getattr(cfg, k) != v]
        raise CheckpointError(f"{path}: checkpoint is for a different model ({'; '.join(diff)})")
    refuse_depth_unlike_the_file(path, saved, layout, "param/blocks.")
    shapes = family_of(saved).param_shapes(saved)
    problems = _array_problems(path, layout, shapes)
    scalars = meta.pop("opt_scalars", {})
    if not isinstance(scalars, dict) or not all(isinstance(v, (int, float)) for v in scalars.values()):
        problems.append(f"optimiser scalars must be numbers, got {scalars!r}")
        scalars = {}
    problems += _meta_problems(meta, saved, require)
    if problems:
        raise CheckpointError(f"{path}: invalid checkpoint: " + "; ".join(problems))
    refuse_too_large(path, layout)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in layout if k != "meta"}
    except Exception as e:  # a member whose data is cut short or corrupted
        raise CheckpointError(f"{path}: not a readable minivit checkpoint ({type(e).__name__}: {e})") from None
    nonfinite = [f"parameter {k[6:]!r} holds NaN or infinite values" for k, v in arrays.items()
                 if k.startswith("param/") and not np.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(f"{path}: invalid checkpoint: " + "; ".join(nonfinite))
    params = {name: to_device(arrays["param/" + name]) for name in shapes}
    opt_state = {k[4:]: to_device(v) for k, v in arrays.items() if k.startswith("opt/")}
    opt_state.update(scalars)
    return params, saved, opt_state, meta

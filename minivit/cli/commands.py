"""Command line: `minivit train | pretrain | finetune | evaluate | predict | fewshot | profile | export | make-subset` (also `python -m minivit`)."""
import contextlib
import json
import math
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..backend import BackendError, fused_on, to_numpy, use_backend
from ..io.checkpoint import CheckpointError
from ..config import ConfigError, ViTConfig
from ..data.splits import DataError
from ..io.run_folder import RunFolderBusy, is_run_folder, new_run_folder, run_folder
from ..io.pretrained import load_pretrained
from ..models.vit import require_class_head
from ..models.objectives import OBJECTIVES
from ..train.trainer import TrainingDiverged
from ..train.engine import check_memory
from ..train.distributed import DistributedError, current_world
from .parser import MODEL_FLAGS, _parser, model_choice, train_config

PACKAGE_DIR = Path(__file__).resolve().parents[1]   # the installed minivit/ folder


def _run_folder(a):
    """--out, or a new runs/<time> folder; --resume needs the folder of the run it continues.
    Under MPI rank 0 makes the folder and tells the others its name."""
    if a.resume and not a.out:
        raise ValueError("--resume continues the run in --out; name its folder (e.g. --out runs/20261206-101500)")
    world = current_world()
    return Path(world.bcast(str(a.out or new_run_folder()) if world.is_root else None))


@contextlib.contextmanager
def _run_folder_checked(a):
    """The run folder, locked and checked before any data loads, held to the command's end, and removed
    again if the command fails before writing into it (io/run_folder.py). Only rank 0 touches it (the
    others get its name)."""
    created = a.out is None or not Path(a.out).exists()   # removed again if the command fails before using it
    out = _run_folder(a)
    if not current_world().is_root:
        yield out
        return
    with run_folder(out, a.resume, created=created, parent_too=a.out is None):
        yield out


def cmd_train(a, head="classify"):
    tcfg = train_config(a)   # a bad setting is refused before any run folder is made
    with _run_folder_checked(a) as out:
        return _train(a, out, head, tcfg)


def _load_data(spec):
    """load_dataset; under MPI rank 0 first (it may write the decoded cache), then the others read it."""
    from ..data.datasets import load_dataset
    world = current_world()
    if not world.is_root:
        world.barrier()
    data = load_dataset(spec)
    if world.is_root:
        world.barrier()
    return data


def cmd_pretrain(a):
    """Masked patch prediction (minivit/models/mpp.py): the train command with the colour head instead of the
    class head; the data's labels are not read. Fine-tune the result with `minivit finetune`."""
    return cmd_train(a, head="mpp")


def _train(a, out, head, tcfg):
    from ..train.trainer import Trainer
    preset, overrides = model_choice(a)   # the recipe's, then the user's flags
    OBJECTIVES[head].check_settings(tcfg, overrides)   # before any data loads (models/objectives.py)
    data = _load_data(a.data)
    cfg = ViTConfig.preset(preset, **{"num_classes": len(data.classes), **overrides, "head": head})
    changed = "".join(f", {k}={v}" for k, v in overrides.items())
    recipe = f"recipe: {tcfg.recipe}; " if tcfg.recipe else ""
    print(f"data: {a.data} ({len(data.train.labels)} train, {len(data.test.labels)} test, {len(data.classes)} classes); "
          f"{recipe}model: {preset}{changed}; output: {out}")
    trainer = Trainer(cfg, tcfg, data, out, resume=a.resume, progress=_progress(a), data_spec=a.data)
    from ..models.vit import count_params
    length = (f"{tcfg.time_budget:g} minutes of training" if tcfg.time_budget else f"{trainer.total_steps} steps")
    print(f"{count_params(cfg):,} parameters; {length} of {tcfg.batch_size}-image steps")
    return _fit(trainer, out)


def _progress(a):
    """Progress bars unless --no-progress, and never into a redirected log (no \r-flooded files)."""
    return not a.no_progress and sys.stderr.isatty()


def _fit(trainer, out):
    """Record the command, train, and report: the end shared by train and finetune; returns the exit code."""
    if trainer.world.is_root:
        (out / "command.txt").write_text(" ".join(["minivit"] + sys.argv[1:]) + "\n")
    history = trainer.fit()
    if trainer.interrupted:
        return 143 if trainer.interrupted == "SIGTERM" else 130  # 128 + the signal's number, as shells do
    if history:
        h = history[-1]
        plots = " and ".join(str(out / f) for f in ("curves.png", "confusion.png") if (out / f).exists())
        tta = f" ({h['test_tta_acc']:.4f} with --tta {trainer.tcfg.tta})" if h.get("test_tta_acc") is not None else ""
        print(f"done: {trainer.objective.METRIC} {h['test_acc']:.4f}{tta} after {h['epoch']} epochs, {h['elapsed_s']:.0f} s of training; "
              f"checkpoint {out / 'checkpoint.npz'}, metrics {out / 'metrics.jsonl'}" + (f", plots {plots}" if plots else ""))
    return 0


def _by_model_class(data, model_classes):
    """The data's test split with labels renumbered into the model's classes, matched by name."""
    from ..data.splits import Split
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in data.classes if c not in index]
    if unknown:
        raise DataError(f"the data has classes the model was not trained on: {', '.join(unknown)} "
                        f"(the model knows {', '.join(model_classes)})")
    remap = np.array([index[c] for c in data.classes], dtype=np.int64)
    return Split(data.test.images, remap[data.test.labels])


def _checkpoint_and_data(a):
    """The checkpoint a.checkpoint and the data a.data (default: what it was trained on), with the
    position embeddings resized to the data's images where their size differs (paper section 3.2)."""
    from ..data.datasets import load_dataset
    from ..models.resolution import adapt_to_images
    params, cfg, meta = _load_for_inference(a.checkpoint)
    if "data" not in meta and not a.data:
        raise DataError(f"{a.checkpoint} records no training data; pass --data with the images to use")
    spec = a.data or meta.get("data", "subset")
    if not a.data and spec not in ("subset", "cifar10") and not Path(spec).exists():
        raise DataError(f"{a.checkpoint} was trained on --data {spec}, which is not found from {Path.cwd()}; "
                        "pass --data with its path from here")
    data = load_dataset(spec)
    params, cfg = adapt_to_images(params, cfg, data.image_shape, log=lambda m: print(m, file=sys.stderr))
    return params, cfg, meta, spec, data


def cmd_evaluate(a):
    from ..train.plots import plot_confusion
    from ..train.engine import evaluate
    confusion = Path(a.confusion) / "confusion.png" if a.confusion and Path(a.confusion).is_dir() else a.confusion
    if confusion and not Path(confusion).resolve().parent.is_dir():
        raise OSError(f"--confusion {a.confusion}: the folder {Path(a.confusion).parent} does not exist")
    params, cfg, meta, spec, data = _checkpoint_and_data(a)
    require_class_head(cfg)   # the test accuracy of a class head; pre-training's colours are not classes
    classes = list(meta.get("classes") or [str(i) for i in range(cfg.num_classes)])
    test = _by_model_class(data, classes)
    ev = evaluate(params, cfg, test, np.array(meta["mean"]), np.array(meta["std"]), tta=a.tta)
    present = [i for i, c in enumerate(classes) if (test.labels == i).any()]  # only classes the data has
    per_class = {classes[i]: round(float((ev["predictions"][test.labels == i] == i).mean()), 5) for i in present}
    finite = lambda v: round(v, 5) if np.isfinite(v) else None  # JSON has no NaN
    result = {"data": spec, "images": len(test.labels), "loss": finite(ev["loss"]), "accuracy": finite(ev["accuracy"]),
              "tta": a.tta or None}
    if a.json:
        print(json.dumps({**result, "per_class": per_class}))
    else:
        tta = f" (test-time augmentation: {a.tta})" if a.tta else ""
        print(f"{Path(a.checkpoint).name} on {spec}: {result['images']:,} images, accuracy {ev['accuracy']:.4f}, "
              f"loss {ev['loss']:.4f}{tta}\n{'class':>14s} accuracy")
        for c, acc in per_class.items():
            print(f"  {c:>12s} {acc:.3f}")
    if confusion:
        plot_confusion(test.labels, ev["predictions"], classes, confusion,
                       title=f"{Path(a.checkpoint).name}: test accuracy {ev['accuracy']:.1%}")
        if not a.json:
            print(f"confusion matrix: {confusion}")
    return 0


def cmd_predict(a):
    from ..layers.attention import softmax
    from ..backend import xp
    from ..data.image_folder import read_image
    from ..data.transforms import normalize, tta_views
    from ..models.vit import forward
    from ..models.resolution import adapt_to_images
    if a.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {a.top_k}")
    params, cfg, meta = _load_for_inference(a.checkpoint)
    S, P = cfg.image_size, cfg.patch_size
    images = [read_image(f, size=S if a.resize else None, resize=a.resize) for f in a.images]  # (3, H, W) uint8
    for f, im in zip(a.images, images):
        h, w = im.shape[1:]
        if (h, w) != (S, S) and (h != w or h % P):
            raise DataError(f"{f}: image is {w}x{h}, the model expects {S}x{S}; pass --resize to resize it "
                            f"(square images whose side is a multiple of {P} also work as they are)")
    classes = meta.get("classes") or [str(i) for i in range(cfg.num_classes)]
    k = min(a.top_k, cfg.num_classes)
    probs = {}
    for shape in dict.fromkeys(im.shape for im in images):  # one batch per image size, in order of appearance
        idx = [i for i, im in enumerate(images) if im.shape == shape]
        p_, c_ = adapt_to_images(params, cfg, shape, log=lambda m: print(m, file=sys.stderr))
        x = normalize(np.stack([images[i] for i in idx]), np.array(meta["mean"]), np.array(meta["std"]), xp(),
                      params["cls_token"].dtype)
        logits = sum(w * forward(p_, view, c_, keep_cache=False)[0] for w, view in tta_views(x, a.tta))  # (B, K)
        for i, p in zip(idx, to_numpy(softmax(logits))):
            probs[i] = p
    for i, f in enumerate(a.images):
        top = np.argsort(-probs[i])[:k]
        print(f"{f}: " + ", ".join(f"{classes[j]} {probs[i][j]:.3f}" for j in top))
    return 0


def _load_for_inference(path):
    """(params, cfg, meta) of a minivit checkpoint, or of any pretrained file (a .safetensors, a transformers
    folder, an official .npz) that records its normalisation: meta holds 'mean', 'std' and 'classes'
    (and, for a minivit checkpoint, the 'data' it was trained on)."""
    params, cfg, info = load_pretrained(path, require=("mean", "std"), log=lambda m: print(m, file=sys.stderr))
    if "mean" not in info:
        raise CheckpointError(f"{path}: the file records no normalisation (mean and std), which this command needs; "
                              "fine-tune it on your data first (`minivit finetune`), which measures them")
    return params, cfg, info


def cmd_finetune(a):
    """Paper section 3.2 and Appendix B.1.1: the pre-trained head is replaced by a zero-initialised one for the
    new classes, the position embeddings follow the new resolution, and SGD with momentum 0.9, no weight decay,
    clipping at 1, a short warmup and cosine decay train everything."""
    if a.image_size is not None and a.image_size < 1:
        raise ValueError(f"--image-size must be a positive number of pixels, got {a.image_size}")
    tcfg = train_config(a)   # a bad setting is refused before any run folder is made
    with _run_folder_checked(a) as out:
        return _finetune(a, out, tcfg)


def _finetune(a, out, tcfg):
    from ..data.splits import Dataset, Split
    from ..models.vit import with_new_head
    from ..models.resolution import resize_images, resize_pos_embed
    from ..train.trainer import Trainer
    params, cfg, _ = load_pretrained(a.checkpoint, heads=a.heads, bfloat16=a.bfloat16,
                                     log=lambda m: print(m, file=sys.stderr))
    data = _load_data(a.data)
    size = a.image_size or data.image_shape[1]
    if data.image_shape[0] != cfg.in_channels:
        raise DataError(f"the data's images have {data.image_shape[0]} channels, the model {cfg.in_channels}")
    if size != cfg.image_size or data.image_shape[1:] != (size, size):   # before any resizing: must it fit?
        images = (len(data.train.labels) + len(data.test.labels)) * cfg.in_channels * size * size
        check_memory(ViTConfig.from_dict({**cfg.to_dict(), "image_size": size}), tcfg.batch_size, tcfg.threads,
                     images, what=f"fine-tuning at --image-size {size}")
    if data.image_shape[1:] != (size, size):  # fine-tuning at a higher resolution than the data (paper 3.2)
        print(f"resizing the data's {data.image_shape[2]}x{data.image_shape[1]} images to {size}x{size} (bicubic)")
        data = Dataset(Split(resize_images(data.train.images, size), data.train.labels),
                       Split(resize_images(data.test.images, size), data.test.labels), data.classes, data.name)
    if size != cfg.image_size:
        old = cfg.image_size
        params, cfg = resize_pos_embed(params, cfg, size)
        print(f"position embeddings resized (bilinear) from {old}x{old} to {size}x{size}: {cfg.num_patches} patches")
    K = len(data.classes)
    params, cfg = with_new_head(params, cfg, K)  # a new, zero head (paper 3.2); a colour head and [mask] are dropped
    print(f"fine-tuning {a.checkpoint} on {a.data} ({len(data.train.labels)} train images, {K} classes, "
          f"{size}x{size}); output: {out}")
    trainer = Trainer(cfg, tcfg, data, out, resume=a.resume, progress=_progress(a), data_spec=a.data, init=params)
    return _fit(trainer, out)


def cmd_fewshot(a):
    from ..tools.fewshot import features, fewshot_accuracy, linear_probe
    if min(a.shots) < 1 or a.draws < 1 or not (a.l2 > 0 and math.isfinite(a.l2)):
        raise ValueError(f"--shots must be >= 1, --draws >= 1 and --l2 > 0 (got {a.shots}, {a.draws}, {a.l2})")
    params, cfg, meta, spec, data = _checkpoint_and_data(a)
    if a.pool:
        cfg = replace(cfg, pool=a.pool)
    mean, std = np.array(meta["mean"]), np.array(meta["std"])
    if not a.json:
        print(f"features of {len(data.train.labels):,} training and {len(data.test.labels):,} test images ...",
              file=sys.stderr)
    train, test = (features(params, s.images, cfg, mean, std) for s in (data.train, data.test))
    K = len(data.classes)
    result = {"data": spec, "classes": K, "pool": cfg.pool, "draws": a.draws, "l2": a.l2, "fewshot": {}}
    for k in a.shots:
        acc, sd = fewshot_accuracy(train, data.train.labels, test, data.test.labels, k, K, a.draws, a.l2, a.seed)
        result["fewshot"][str(k)] = {"accuracy": round(acc, 5), "std": round(sd, 5)}
    if not a.no_probe:
        result["linear_probe"] = round(linear_probe(train, data.train.labels, test, data.test.labels, K)[0], 5)
    if a.json:
        from ..machine import machine
        print(json.dumps({**result, "checkpoint": a.checkpoint, "seed": a.seed, "machine": machine()}))
        return 0
    print(f"{Path(a.checkpoint).name} on {spec}: {K} classes, {len(data.test.labels):,} test images, "
          f"representation: {'class token' if cfg.pool == 'token' else 'mean of the patch tokens'}")
    print(f"{'shots':>6} {'accuracy':>9}  (mean ± std over {a.draws} draws, ridge l2 = {a.l2:g})")
    for k, r in result["fewshot"].items():
        print(f"{k:>6} {r['accuracy']:9.1%} ± {r['std']:.1%}")
    if "linear_probe" in result:
        print(f"linear probe on all {len(data.train.labels):,} training images: {result['linear_probe']:.1%}")
    return 0


def cmd_profile(a):
    from ..tools.profile import profile_step
    overrides = {k: getattr(a, k) for k in MODEL_FLAGS if getattr(a, k) is not None}
    print(profile_step(ViTConfig.preset(a.preset, **overrides), batch_size=a.batch_size, steps=a.steps,
                        mode=a.mode))
    return 0


def cmd_export(a):
    """Write a checkpoint (or any file load_pretrained reads) as timm's or transformers' .safetensors,
    the official .npz, or an ONNX graph (minivit/io/safetensors_file.py, minivit/io/huggingface.py,
    minivit/io/jax_npz.py, minivit/io/onnx_graph.py)."""
    from ..io.huggingface import save_hf
    from ..io.safetensors_file import save_timm
    from ..io.jax_npz import save_jax_npz
    from ..io.onnx_graph import save_onnx
    out = Path(a.out)
    suffix = {"timm": ".safetensors", "npz": ".npz", "onnx": ".onnx"}.get(a.format)
    if suffix and out.suffix != suffix:
        raise ValueError(f"--format {a.format} writes a {suffix} file; name --out so (got {a.out})")
    if a.format == "hf" and out.is_file():
        raise ValueError(f"--format hf writes a folder; --out {a.out} is a file")
    if out.exists() and out.resolve() == Path(a.checkpoint).resolve():
        raise ValueError(f"--out {a.out} is the file being exported; write it elsewhere")
    run = out if a.format == "hf" else out.parent
    if is_run_folder(run):
        raise ValueError(f"--out {a.out}: {run} is a minivit run folder (it holds a checkpoint or metrics); "
                         "export outside it, so the run can still be resumed and evaluated")
    if out.exists() and not a.force:
        raise ValueError(f"--out {a.out} exists; choose another name, or pass --force to replace it")
    params, cfg, info = load_pretrained(a.checkpoint, heads=a.heads, bfloat16=a.bfloat16,
                                        log=lambda m: print(m, file=sys.stderr))
    classes, mean, std = info.get("classes"), info.get("mean"), info.get("std")
    if a.format == "timm":
        save_timm(out, params, cfg, classes, mean, std)
    elif a.format == "hf":
        save_hf(out, params, cfg, classes, mean, std)
    elif a.format == "npz":
        save_jax_npz(out, params, cfg)
    else:
        if mean is None:
            raise CheckpointError(f"{a.checkpoint} records no normalisation; the ONNX graph normalises its input "
                                  "itself and needs the mean and std")
        save_onnx(out, params, cfg, mean, std, classes)
    print(f"wrote {out} ({a.format})")
    return 0


def cmd_make_subset(a):
    from ..data.image_folder import make_subset
    dest = Path(a.dest)
    if PACKAGE_DIR in dest.resolve().parents:  # the shipped subset, or anything else inside the package
        raise ValueError(f"--dest {a.dest} is inside the installed minivit package; write the subset elsewhere "
                         "(the package's own data is not to be overwritten)")
    dest = make_subset(a.source, dest, a.train_per_class, a.test_per_class)
    print(f"wrote {dest} ({dest.stat().st_size:,} bytes)")
    return 0


def cmd_info(a):
    """This machine's record (minivit/machine.py) and minivit's version, as JSON: what the docs' figures name."""
    from importlib.metadata import PackageNotFoundError, version
    from ..machine import machine
    try:
        mine = version("minivit")
    except PackageNotFoundError:   # run from a checkout that was never installed
        mine = None
    print(json.dumps({"minivit": mine, "kernels_on": fused_on(), **machine()}, indent=2))
    return 0


class Terminated(BaseException):
    """SIGTERM outside training (loading data, evaluating): unwinds like Ctrl-C, so a run folder this
    command created and never used is removed. (Training catches SIGTERM itself and saves.)"""


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv=None):
    a = _parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        code = _run(a)
    finally:
        if main_thread:  # (None: a handler from outside Python; the default then)
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    _end_the_job_if_failed(code)
    return code


# Under mpiexec these run on every rank together; the others are one-process commands.
MPI_COMMANDS = ("train", "pretrain", "finetune", "profile")


def _join_the_world(a):
    """Under mpiexec: join the MPI world (minivit/train/distributed.py). Only rank 0 speaks on stdout;
    an uncaught exception on any rank ends the whole job."""
    world = current_world()
    if world.size == 1:
        return
    if a.command not in MPI_COMMANDS:
        raise ValueError(f"`minivit {a.command}` runs in one process; under mpiexec only "
                         f"{', '.join(MPI_COMMANDS)} run (start it without mpiexec)")
    world.guard_exceptions()
    if not world.is_root:
        sys.stdout = open(os.devnull, "w")


def _end_the_job_if_failed(code):
    """A rank that fails (a user's error) ends every rank, naming itself, so none waits forever for it in
    a sum. 130 and 143 here are a training run's stop, which every rank agreed on (train/trainer.py) and
    leaves together after rank 0 saved; a signal outside training ends the job at once (_end_the_job).
    A world of one just returns."""
    if code not in (130, 143):
        _end_the_job(code)


def _end_the_job(code):
    """Under MPI, a rank's failure or a signal it alone acted on (Ctrl-C or SIGTERM while loading data,
    when the other ranks may be waiting in a collective) ends every rank now, with `code`. -> code."""
    from ..train.distributed import joined_world
    world = joined_world()
    if code and world is not None and world.size > 1:
        print(f"minivit: rank {world.rank} of {world.size} ended with status {code}; ending the job", file=sys.stderr)
        world.abort(code)
    return code


def _run(a):
    """Run the parsed command; a user's mistake is one line on stderr and exit status 1."""
    try:
        if getattr(a, "backend", None):
            use_backend(a.backend)
        _join_the_world(a)
        return {"train": cmd_train, "pretrain": cmd_pretrain, "evaluate": cmd_evaluate, "predict": cmd_predict,
                "profile": cmd_profile, "finetune": cmd_finetune, "fewshot": cmd_fewshot, "make-subset": cmd_make_subset,
                "export": cmd_export, "info": cmd_info}[a.command](a)
    except (DataError, CheckpointError, ConfigError, BackendError, TrainingDiverged, RunFolderBusy, ValueError,
            MemoryError, OSError, DistributedError, ImportError) as e:   # ImportError: an optional extra is missing
        if os.environ.get("MINIVIT_DEBUG"):
            raise
        print(f"minivit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside training (loading data, evaluating): no traceback
        print("minivit: interrupted", file=sys.stderr)
        return _end_the_job(130)
    except Terminated:
        print("minivit: terminated (SIGTERM)", file=sys.stderr)
        return _end_the_job(143)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `minivit train | evaluate | predict | profile | make-subset` (also `python -m minivit`)."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .backend import BackendError, to_numpy, use_backend
from .checkpoint import CheckpointError, load_checkpoint
from .config import PRESETS, ConfigError, ViTConfig
from .data import DataError
from .train import TrainConfig, TrainingDiverged

MODEL_FLAGS = {"image_size": int, "patch_size": int, "dim": int, "depth": int, "heads": int, "mlp_dim": int,
               "pool": str, "pos_embed": str, "gelu": str, "dropout": float, "attn_dropout": float}


def _parser():
    p = argparse.ArgumentParser(prog="minivit", description="A hand-written Vision Transformer on NumPy/CuPy.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a ViT (default: the shipped CIFAR-10 subset, a few minutes on a CPU)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", default="subset",
                   help="'subset' (shipped, offline), 'cifar10' (official archive, downloaded once), or a path to "
                        "cifar-10-python.tar.gz / an image folder or its .tar.gz/.zip")
    t.add_argument("--preset", default="cifar-tiny", help=f"model preset: {', '.join(PRESETS)}")
    for name, typ in MODEL_FLAGS.items():
        t.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=f"override the preset's {name}")
    defaults = TrainConfig()
    t.add_argument("--epochs", type=int, default=defaults.epochs)
    t.add_argument("--batch-size", type=int, default=defaults.batch_size)
    t.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    t.add_argument("--min-lr", type=float, default=defaults.min_lr)
    t.add_argument("--warmup", type=float, default=defaults.warmup_epochs, help="warmup epochs")
    t.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    t.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    t.add_argument("--clip-norm", type=float, default=defaults.clip_norm, help="0 disables clipping")
    t.add_argument("--no-augment", action="store_true", help="disable random crop and flip")
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument("--threads", type=int, default=defaults.threads, help="data-parallel threads (NumPy backend)")
    t.add_argument("--backend", choices=["numpy", "cupy"], default=None, help="default: $MINIVIT_BACKEND or numpy")
    t.add_argument("--out", default=None, help="output folder (default: runs/<time>)")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")

    e = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help="default: the data the checkpoint was trained on")
    e.add_argument("--backend", choices=["numpy", "cupy"], default=None)
    e.add_argument("--confusion", default=None, help="write the confusion matrix to this PNG")

    r = sub.add_parser("predict", help="top-k classes for image files")
    r.add_argument("checkpoint")
    r.add_argument("images", nargs="+")
    r.add_argument("--top-k", type=int, default=3)
    r.add_argument("--resize", action="store_true", help="resize images to the model's size instead of refusing")
    r.add_argument("--backend", choices=["numpy", "cupy"], default=None)

    f = sub.add_parser("profile", help="time each layer's forward and backward in a training step",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("--preset", default="cifar-small", help=f"model preset: {', '.join(PRESETS)}")
    for name, typ in MODEL_FLAGS.items():
        f.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=f"override the preset's {name}")
    f.add_argument("--batch-size", type=int, default=128)
    f.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    f.add_argument("--backend", choices=["numpy", "cupy"], default=None)

    m = sub.add_parser("make-subset", help="build the shipped class-balanced CIFAR-10 subset from an image-folder archive")
    m.add_argument("source", help="e.g. ../shared/datasets/cifar10-jpeg.tar.gz")
    m.add_argument("--dest", default=None)
    m.add_argument("--train-per-class", type=int, default=500)
    m.add_argument("--test-per-class", type=int, default=100)
    return p


def cmd_train(a):
    from .data import load_dataset
    from .train import Trainer
    overrides = {k: getattr(a, k) for k in MODEL_FLAGS if getattr(a, k) is not None}
    cfg = ViTConfig.preset(a.preset, **overrides)
    tcfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, min_lr=a.min_lr, warmup_epochs=a.warmup,
                       weight_decay=a.weight_decay, label_smoothing=a.label_smoothing, clip_norm=a.clip_norm,
                       augment=not a.no_augment, seed=a.seed, threads=a.threads)
    out = Path(a.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if (out / "checkpoint.npz").exists() and not a.resume:
        raise CheckpointError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    data = load_dataset(a.data)
    print(f"data: {a.data} ({len(data.train.labels)} train, {len(data.test.labels)} test, {len(data.classes)} classes); "
          f"model: {a.preset} {overrides or ''}; output: {out}")
    trainer = Trainer(cfg, tcfg, data, out, resume=a.resume, progress=not a.no_progress, data_spec=a.data)
    from .model import count_params
    print(f"{count_params(cfg):,} parameters; {trainer.total_steps} steps of {tcfg.batch_size} images")
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text(" ".join(["minivit"] + sys.argv[1:]) + "\n")
    history = trainer.fit()
    if trainer.interrupted:
        return 130
    if history:
        h = history[-1]
        print(f"done: test accuracy {h['test_acc']:.4f} after {h['epoch']} epochs, {h['elapsed_s']:.0f} s of training; "
              f"checkpoint {out / 'checkpoint.npz'}, metrics {out / 'metrics.jsonl'}, plots {out / 'curves.png'}")
    return 0


def cmd_evaluate(a):
    from .data import load_dataset
    from .plots import plot_confusion
    from .train import check_images_fit, evaluate
    params, cfg, _, meta = load_checkpoint(a.checkpoint)
    spec = a.data or meta.get("data", "subset")
    data = load_dataset(spec)
    check_images_fit(cfg, data)
    ev = evaluate(params, cfg, data.test, np.array(meta["mean"]), np.array(meta["std"]))
    per_class = [(c, float((ev["predictions"][data.test.labels == i] == i).mean())) for i, c in enumerate(data.classes)]
    print(json.dumps({"data": spec, "images": len(data.test.labels), "loss": round(ev["loss"], 5),
                      "accuracy": round(ev["accuracy"], 5)}))
    for c, acc in per_class:
        print(f"  {c:>12s} {acc:.3f}")
    if a.confusion:
        plot_confusion(data.test.labels, ev["predictions"], data.classes, a.confusion,
                       title=f"{Path(a.checkpoint).name}: test accuracy {ev['accuracy']:.1%}")
    return 0


def cmd_predict(a):
    from PIL import Image, UnidentifiedImageError
    from .attention import softmax
    from .backend import xp
    from .data import normalize
    from .model import forward
    params, cfg, _, meta = load_checkpoint(a.checkpoint)
    S = cfg.image_size
    batch = []
    for f in a.images:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (S, S):
                    if not a.resize:
                        raise DataError(f"{f}: image is {im.size[0]}x{im.size[1]}, the model expects {S}x{S}; "
                                        "pass --resize to resize it")
                    im = im.resize((S, S), Image.BILINEAR)
                batch.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
            raise DataError(f"{f}: cannot read image ({e})") from None
    x = normalize(np.stack(batch), np.array(meta["mean"]), np.array(meta["std"]), xp(), params["cls_token"].dtype)
    probs = to_numpy(softmax(forward(params, x, cfg, keep_cache=False)[0]))
    classes = meta.get("classes") or [str(i) for i in range(cfg.num_classes)]
    k = max(1, min(a.top_k, cfg.num_classes))
    for f, p in zip(a.images, probs):
        top = np.argsort(-p)[:k]
        print(f"{f}: " + ", ".join(f"{classes[i]} {p[i]:.3f}" for i in top))
    return 0


def cmd_profile(a):
    from .profile import profile_step
    overrides = {k: getattr(a, k) for k in MODEL_FLAGS if getattr(a, k) is not None}
    print(profile_step(ViTConfig.preset(a.preset, **overrides), batch_size=a.batch_size, steps=a.steps))
    return 0


def cmd_make_subset(a):
    from .data import SUBSET_PATH, make_subset
    dest = make_subset(a.source, a.dest or SUBSET_PATH, a.train_per_class, a.test_per_class)
    print(f"wrote {dest} ({dest.stat().st_size:,} bytes)")
    return 0


def main(argv=None):
    a = _parser().parse_args(argv)
    try:
        if getattr(a, "backend", None):
            use_backend(a.backend)
        return {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
                "profile": cmd_profile, "make-subset": cmd_make_subset}[a.command](a)
    except (DataError, CheckpointError, ConfigError, BackendError, TrainingDiverged, ValueError) as e:
        if os.environ.get("MINIVIT_DEBUG"):
            raise
        print(f"minivit: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

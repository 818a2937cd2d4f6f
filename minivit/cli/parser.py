"""The command line's subcommands and flags.

The model and training flags are made from the config dataclasses' fields (minivit/config.py:
`setting(default, help, choices)`), so each setting, its help line and its allowed values are
written once. Every flag's help names its one default.
"""
import argparse
from dataclasses import asdict, fields

from ..backend import BACKENDS
from ..config import POOLS, PRESETS, RECIPES, TTAS, TrainConfig, ViTConfig

# The model flags: ViTConfig's fields made with setting(). Unset, they keep the preset's value.
MODEL_FLAGS = {f.name: f for f in fields(ViTConfig) if f.metadata}
# What the model flags default to where it is not the preset's value.
MODEL_FLAG_DEFAULTS = {"num_classes": "the number of classes in --data"}
# The training flags: TrainConfig's fields, but the recipe, which `train --recipe` sets as a whole (RECIPES).
TRAIN_FLAGS = {f.name: f for f in fields(TrainConfig) if f.name != "recipe"}
# `finetune`'s own defaults (paper 3.2 and B.1.1): SGD with momentum 0.9, no weight decay, a short warmup,
# cosine decay to 0, clipping at 1, no label smoothing; the paper sweeps the learning rate over 0.001-0.03.
FINETUNE_DEFAULTS = TrainConfig(epochs=5, lr=0.01, min_lr=0.0, warmup_epochs=0.5, weight_decay=0.0,
                                label_smoothing=0.0, optimizer="sgd")


def _flag(f):
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _add_model_flags(parser):
    group = parser.add_argument_group("model")
    for name, f in MODEL_FLAGS.items():
        default = MODEL_FLAG_DEFAULTS.get(name, "the preset's")
        if f.type in (bool, "bool"):  # a switch: given or not (None keeps the preset's value)
            group.add_argument(_flag(f), action="store_true", default=None, help=f"{f.metadata['help']}")
            continue
        group.add_argument(_flag(f), type=_type(f), default=None, choices=f.metadata["choices"],
                           help=f"{f.metadata['help']} (default: {default})")


def _type(f):
    """The flag's type from the field's annotation (a string under `from __future__ import annotations`)."""
    return {"int": int, "float": float, "str": str}.get(f.type, f.type)


def _add_train_flags(parser, defaults):
    """One flag per TrainConfig field, its help naming `defaults`' value (train's, pretrain's or finetune's).
    A flag not given parses as None, so a recipe's setting and the user's own can be told apart (train_config)."""
    group = parser.add_argument_group("training")
    parser.set_defaults(train_defaults=defaults)
    for name, f in TRAIN_FLAGS.items():
        value = getattr(defaults, name)
        if f.type in (bool, "bool"):  # on by default: the flag turns it off
            group.add_argument(_flag(f), dest=name, action="store_false", default=None,
                               help=f"turn off: {f.metadata['help']}")
            continue
        metavar = None if f.metadata["choices"] else _flag(f)[2:].replace("-", "_").upper()
        group.add_argument(_flag(f), dest=name, type=_type(f), default=None, choices=f.metadata["choices"],
                           metavar=metavar, help=f"{f.metadata['help']} (default: {value:g})" if isinstance(value, float)
                           else f"{f.metadata['help']} (default: {value if value != '' else 'off'})")


def train_config(a):
    """The TrainConfig the parsed arguments `a` describe: the command's defaults, then the recipe's settings
    (--recipe), then every flag the user gave. Under mpiexec a recipe runs one thread per rank."""
    settings = asdict(a.train_defaults)
    recipe = getattr(a, "recipe", None)
    if recipe:
        from ..train.distributed import launched_size
        settings.update(RECIPES[recipe].train, recipe=recipe,
                        threads=1 if launched_size() > 1 else settings["threads"])
    settings.update({name: getattr(a, name) for name in TRAIN_FLAGS if getattr(a, name) is not None})
    return TrainConfig(**settings)


def model_choice(a):
    """(preset, ViTConfig overrides) of `train`'s and `pretrain`'s arguments: the recipe's (--recipe), then the
    --preset and model flags the user gave."""
    recipe = RECIPES.get(getattr(a, "recipe", None) or "")
    given = {k: getattr(a, k) for k in MODEL_FLAGS if getattr(a, k) is not None}
    return a.preset or (recipe.preset if recipe else "cifar-tiny"), {**(recipe.model if recipe else {}), **given}


def _add_backend_flag(parser):
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="array backend (default: $MINIVIT_BACKEND, else numpy)")


def _add_run_flags(parser, what):
    """The flags of a command that trains: where the run goes, resuming it, progress bars."""
    _add_backend_flag(parser)
    parser.add_argument("--out", default=None, help="output folder (default: a new folder runs/<date>-<time>)")
    parser.add_argument("--resume", action="store_true", help=f"continue the {what} checkpoint in --out")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are off anyway when the output is not a terminal)")


DATA_HELP = ("'subset' (shipped, offline), 'cifar10' (official archive, downloaded once), or a path to "
             "cifar-10-python.tar.gz / an image folder or its .tar.gz/.zip")


def _add_training_command(sub, name, text, defaults, recipes=False):
    """`train` and `pretrain`: data, preset (and for train, the recipes), model flags, training flags, run flags."""
    epilog = None
    if recipes:
        width = max(map(len, RECIPES))
        epilog = "recipes (--recipe NAME; flags given beside it override single settings):\n" + "\n".join(
            f"  {k:<{width}}  {r.summary}" for k, r in RECIPES.items())
    t = sub.add_parser(name, help=text, description=text, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--data", default="subset", help=f"{DATA_HELP} (default: subset)")
    if recipes:
        t.add_argument("--recipe", choices=list(RECIPES), default=None,
                       help="a whole training setup by name, listed below; recorded in the checkpoint and config.json "
                            "(default: none)")
    t.add_argument("--preset", default=None, help=f"model preset: {', '.join(PRESETS)} (default: the recipe's, "
                   "else cifar-tiny)" if recipes else f"model preset: {', '.join(PRESETS)} (default: cifar-tiny)")
    _add_model_flags(t)
    _add_train_flags(t, defaults)
    _add_run_flags(t, "training")


def _add_evaluate(sub):
    e = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    e.add_argument("checkpoint", help="a checkpoint.npz written by train or finetune, or an exported "
                   ".safetensors / transformers folder that records its normalisation")
    e.add_argument("--data", default=None, help=f"{DATA_HELP} (default: the data the checkpoint was trained on)")
    _add_backend_flag(e)
    e.add_argument("--confusion", default=None, help="also write the confusion matrix to this PNG file")
    e.add_argument("--json", action="store_true", help="print one JSON object (per-class accuracy included), nothing else")
    _add_tta_flag(e)


def _add_tta_flag(parser):
    parser.add_argument("--tta", choices=[t for t in TTAS if t], default="",
                        help="test-time augmentation: average the logits of the image and its mirror (flip), or of "
                             "those and their one-pixel shifts (flip-shift) (default: off)")


def _add_predict(sub):
    r = sub.add_parser("predict", help="top-k classes for image files")
    r.add_argument("checkpoint", help="a checkpoint.npz written by train or finetune")
    r.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...) of the model's size, or any with --resize")
    r.add_argument("--top-k", type=int, default=3, help="how many classes to print per image, at least 1 (default: 3)")
    r.add_argument("--resize", action="store_true", help="resize images to the model's size instead of refusing")
    _add_tta_flag(r)
    _add_backend_flag(r)


def _add_finetune(sub):
    text = ("fine-tune a minivit checkpoint or an official ViT .npz on new data (paper 3.2: a new zero head, "
            "positions resized, SGD with momentum)")
    ft = sub.add_parser("finetune", help=text, description=text)
    ft.add_argument("checkpoint", help="a minivit checkpoint.npz, an official google-research ViT .npz, a timm "
                    ".safetensors or a transformers model folder (config.json + model.safetensors)")
    ft.add_argument("--heads", type=int, default=None,
                    help="attention heads of a timm .safetensors, which does not record them (default: the paper's "
                         "for its width: 3, 6, 12, 16 for 192, 384, 768, 1024)")
    ft.add_argument("--bfloat16", action="store_true",
                    help="widen bfloat16 weights to float32 (exact) instead of refusing them")
    ft.add_argument("--data", default="subset", help=f"the data to fine-tune on: {DATA_HELP} (default: subset)")
    ft.add_argument("--image-size", type=int, default=None,
                    help="resolution to fine-tune at; position embeddings are resized to it (default: the data's)")
    _add_train_flags(ft, FINETUNE_DEFAULTS)
    _add_run_flags(ft, "fine-tuning")


def _add_profile(sub):
    f = sub.add_parser("profile", help="time each layer's forward and backward in a training step (or its "
                       "forward in inference, --mode eval)")
    f.add_argument("--preset", default="cifar-small", help=f"model preset: {', '.join(PRESETS)} (default: cifar-small)")
    _add_model_flags(f)
    f.add_argument("--batch-size", type=int, default=128, help="images in the profiled step (default: 128)")
    f.add_argument("--steps", type=int, default=3, help="profiled steps, after one warm-up step (default: 3)")
    f.add_argument("--mode", choices=["train", "eval"], default="train",
                   help="train: the training step; eval: the forward pass as evaluate/predict run it (default: train)")
    _add_backend_flag(f)


def _add_fewshot(sub):
    fs = sub.add_parser("fewshot", help="linear few-shot accuracy and a linear probe on a checkpoint's frozen features")
    fs.add_argument("checkpoint", help="a checkpoint.npz written by train, pretrain or finetune")
    fs.add_argument("--data", default=None, help="images whose classes are to be told apart: its train split gives "
                    "the shots, its test split the score (default: the data the checkpoint was trained on)")
    fs.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 25],
                    help="training images per class (default: 1 5 10 25)")
    fs.add_argument("--draws", type=int, default=5, help="random draws of the shots, averaged (default: 5)")
    fs.add_argument("--l2", type=float, default=100.0,
                    help="ridge penalty of the least-squares map, on standardised features (default: 100)")
    fs.add_argument("--pool", choices=POOLS, default=None,
                    help="the representation: the class token or the mean of the patch tokens after the final "
                         "LayerNorm (default: what the model's head reads; a masked-patch-prediction model never "
                         "trains its class token, so 'gap' is its natural choice)")
    fs.add_argument("--no-probe", action="store_true", help="skip the logistic-regression probe on all training images")
    fs.add_argument("--seed", type=int, default=0, help="seeds the draws of the shots (default: 0)")
    _add_backend_flag(fs)
    fs.add_argument("--json", action="store_true",
                    help="print one JSON object (the settings, the accuracies and this machine's record), nothing else")


def _add_export(sub):
    x = sub.add_parser("export", help="write a checkpoint as timm's or transformers' .safetensors, the official "
                       ".npz, or an ONNX graph for onnxruntime")
    x.add_argument("checkpoint", help="a minivit checkpoint.npz (or any file finetune reads)")
    x.add_argument("--format", required=True, choices=["timm", "hf", "npz", "onnx"],
                   help="timm: a .safetensors in timm's layout; hf: a transformers ViTForImageClassification folder; "
                        "npz: google-research's layout; onnx: the forward pass as an ONNX graph (opset 17)")
    x.add_argument("--out", required=True,
                   help="the file to write: .safetensors (timm), .npz, .onnx, or a folder for --format hf")
    x.add_argument("--heads", type=int, default=None,
                   help="attention heads of a timm .safetensors, which does not record them (default: the paper's "
                        "for its width)")
    x.add_argument("--bfloat16", action="store_true", help="widen bfloat16 weights to float32 instead of refusing them")
    x.add_argument("--force", action="store_true",
                   help="replace what is at --out (never a minivit run folder or a file inside one)")


def _add_make_subset(sub):
    m = sub.add_parser("make-subset", help="build the shipped class-balanced CIFAR-10 subset from an image-folder archive")
    m.add_argument("source", help="an image-folder archive, e.g. ../shared/datasets/cifar10-jpeg.tar.gz")
    m.add_argument("--dest", default="cifar10-subset.tar.gz",
                   help="the .tar.gz to write; never inside the package (default: cifar10-subset.tar.gz here)")
    m.add_argument("--train-per-class", type=int, default=500, help="training images per class (default: 500)")
    m.add_argument("--test-per-class", type=int, default=100, help="test images per class (default: 100)")


def _parser():
    p = argparse.ArgumentParser(prog="minivit", description="A hand-written Vision Transformer on NumPy/CuPy.")
    sub = p.add_subparsers(dest="command", required=True)

    _add_training_command(sub, "train", "train a ViT (default: the shipped CIFAR-10 subset, a few minutes on a CPU)",
                          TrainConfig(), recipes=True)
    _add_training_command(sub, "pretrain", "self-supervised pre-training by masked patch prediction (paper B.1.2): "
                          "the labels are not used", TrainConfig(label_smoothing=0.0))
    _add_evaluate(sub)
    _add_predict(sub)
    _add_finetune(sub)
    _add_profile(sub)
    _add_fewshot(sub)
    _add_export(sub)
    _add_make_subset(sub)
    sub.add_parser("info", help="print this machine's record (CPU, vector ISA, BLAS, numba, MKL, CuPy, versions) "
                   "as JSON, to quote in a bug report or to hold against the figures in docs/")
    return p

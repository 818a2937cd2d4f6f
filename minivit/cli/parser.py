"""The command line's flags and subcommands."""
import argparse

from ..config import POS_EMBEDS, PRESETS, TrainConfig


# Model flags: name -> (type, help, allowed values or None). Unset flags keep the preset's value.
MODEL_FLAGS = {
    "image_size": (int, "input height = width in pixels", None),
    "patch_size": (int, "side P of the square patches; image_size must be a multiple", None),
    "num_classes": (int, "classes of the head (default: the number of classes in --data)", None),
    "dim": (int, "token width D", None),
    "depth": (int, "number of encoder blocks", None),
    "heads": (int, "attention heads; dim must be a multiple", None),
    "mlp_dim": (int, "hidden width of each block's MLP", None),
    "pool": (str, "what the head reads: the class token or the mean of the patch tokens", ("token", "gap")),
    "pos_embed": (str, "position embedding (paper D.4): learned 1-D table, learned row and column tables, "
                       "fixed 2-D sine-cosine, or none", POS_EMBEDS),
    "pos_embed_every_layer": (bool, "add a separate position embedding at the start of every block "
                                    "instead of once after the stem", None),
    "gelu": (str, "GELU form: exact (erf) or the tanh approximation", ("exact", "tanh")),
    "dropout": (float, "dropout after embeddings, attention output and MLP layers", None),
    "attn_dropout": (float, "dropout on the attention weights", None),
    "drop_path": (float, "stochastic depth: the drop rate of the last block's branches (0 at the first, "
                         "linear in between)", None),
    "layer_scale": (float, "LayerScale: per-channel gains on each residual branch, initialised to this "
                           "(e.g. 1e-4); 0 = off", None),
    "attn_init": (str, "attention weights at initialisation: Xavier, or mimetic (W_q W_k^T near +I, "
                       "W_v W_proj near -I)", ("xavier", "mimetic")),
}


def _add_model_flags(parser):
    for name, (typ, text, choices) in MODEL_FLAGS.items():
        if typ is bool:  # a switch: given or not (None keeps the preset's value)
            parser.add_argument("--" + name.replace("_", "-"), action="store_true", default=None,
                                help=f"{text}%(default).0s")
            continue
        parser.add_argument("--" + name.replace("_", "-"), type=typ, default=None, choices=choices,
                            help=f"{text} (default: the preset's)%(default).0s")  # .0s: no "(default: None)"


def _add_training_flags(parser, defaults):
    """The flags `train` and `pretrain` share: data, model, schedule, output."""
    parser.add_argument("--data", default="subset",
                        help="'subset' (shipped, offline), 'cifar10' (official archive, downloaded once), or a path to "
                             "cifar-10-python.tar.gz / an image folder or its .tar.gz/.zip")
    parser.add_argument("--preset", default="cifar-tiny", help=f"model preset: {', '.join(PRESETS)}")
    _add_model_flags(parser)
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="passes over the training set (with --resume, a larger value extends a finished run)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per optimiser step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (AdamW)")
    parser.add_argument("--min-lr", type=float, default=defaults.min_lr, help="learning rate at the end of the cosine decay")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_epochs, help="linear warmup length, in epochs")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help="AdamW decoupled weight decay (matrices only)")
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing,
                        help="cross-entropy target smoothing during training (the test loss is reported without it)")
    parser.add_argument("--clip-norm", type=float, default=defaults.clip_norm, help="clip gradients to this global norm; 0 disables")
    parser.add_argument("--no-augment", action="store_true", help="disable random crop and flip")
    parser.add_argument("--mixup", type=float, default=defaults.mixup,
                        help="MixUp: blend image pairs with a Beta(a, a) share, soft targets; a, 0 = off (e.g. 0.8)")
    parser.add_argument("--cutmix", type=float, default=defaults.cutmix,
                        help="CutMix: paste a box of another image, Beta(a, a) share; a, 0 = off (e.g. 1.0); "
                             "with --mixup too, each batch is one of the two")
    parser.add_argument("--randaugment", type=int, default=defaults.randaugment, metavar="N",
                        help="RandAugment: N operations per image (of 14: colour, contrast, rotate, shear, ...); 0 = off")
    parser.add_argument("--randaugment-magnitude", type=float, default=defaults.randaugment_magnitude, metavar="M",
                        help="RandAugment's magnitude, 0..10")
    parser.add_argument("--random-erasing", type=float, default=defaults.random_erasing, metavar="P",
                        help="random erasing: each image gets a random box set to the mean colour with probability P")
    parser.add_argument("--ema", type=float, default=defaults.ema,
                        help="keep an exponential moving average of the weights with this decay (e.g. 0.999) and "
                             "report its test accuracy beside the weights'; 0 = off")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds initialisation, shuffling, augmentation, dropout")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="data-parallel threads (NumPy backend)")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default=None, help="default: $MINIVIT_BACKEND or numpy")
    parser.add_argument("--out", default=None, help="output folder (default: a new runs/<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are off anyway when the output is not a terminal)")


def _parser():
    p = argparse.ArgumentParser(prog="minivit", description="A hand-written Vision Transformer on NumPy/CuPy.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a ViT (default: the shipped CIFAR-10 subset, a few minutes on a CPU)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_training_flags(t, TrainConfig())
    pt = sub.add_parser("pretrain", help="self-supervised pre-training by masked patch prediction (paper B.1.2): "
                                         "the labels are not used", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_training_flags(pt, TrainConfig(label_smoothing=0.0))

    e = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help="default: the data the checkpoint was trained on")
    e.add_argument("--backend", choices=["numpy", "cupy"], default=None)
    e.add_argument("--confusion", default=None, help="write the confusion matrix to this PNG")
    e.add_argument("--json", action="store_true", help="print one JSON object (per-class accuracy included), nothing else")

    r = sub.add_parser("predict", help="top-k classes for image files")
    r.add_argument("checkpoint")
    r.add_argument("images", nargs="+")
    r.add_argument("--top-k", type=int, default=3, help="how many classes to print per image (at least 1)")
    r.add_argument("--resize", action="store_true", help="resize images to the model's size instead of refusing")
    r.add_argument("--backend", choices=["numpy", "cupy"], default=None)

    ft = sub.add_parser("finetune", help="fine-tune a minivit checkpoint or an official ViT .npz on new data "
                                         "(paper 3.2: new zero head, positions resized, SGD with momentum)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ft.add_argument("checkpoint", help="a minivit checkpoint.npz or an official google-research ViT .npz")
    ft.add_argument("--data", default="subset", help="the data to fine-tune on (as for train)")
    ft.add_argument("--image-size", type=int, default=None,
                    help="resolution to fine-tune at (default: the data's); position embeddings are resized to it")
    ft.add_argument("--epochs", type=int, default=5, help="passes over the training set")
    ft.add_argument("--batch-size", type=int, default=128, help="images per optimiser step")
    ft.add_argument("--lr", type=float, default=0.01, help="peak learning rate (the paper sweeps 0.001 to 0.03)")
    ft.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    ft.add_argument("--warmup", type=float, default=0.5, help="linear warmup length, in epochs")
    ft.add_argument("--weight-decay", type=float, default=0.0, help="the paper fine-tunes without weight decay")
    ft.add_argument("--clip-norm", type=float, default=1.0, help="clip gradients to this global norm, as the paper")
    ft.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy target smoothing")
    ft.add_argument("--no-augment", action="store_true", help="disable random crop and flip")
    ft.add_argument("--seed", type=int, default=0, help="seeds shuffling, augmentation, dropout")
    ft.add_argument("--threads", type=int, default=2, help="data-parallel threads (NumPy backend)")
    ft.add_argument("--backend", choices=["numpy", "cupy"], default=None, help="default: $MINIVIT_BACKEND or numpy")
    ft.add_argument("--out", default=None, help="output folder (default: a new runs/<time>)")
    ft.add_argument("--resume", action="store_true", help="continue the fine-tuning checkpoint in --out")
    ft.add_argument("--no-progress", action="store_true", help="no progress bars")

    f = sub.add_parser("profile", help="time each layer's forward and backward in a training step (or its "
                       "forward in inference, --mode eval)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("--preset", default="cifar-small", help=f"model preset: {', '.join(PRESETS)}")
    _add_model_flags(f)
    f.add_argument("--batch-size", type=int, default=128, help="images in the profiled step")
    f.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    f.add_argument("--mode", choices=["train", "eval"], default="train",
                   help="train: the training step; eval: the forward pass as evaluate/predict run it")
    f.add_argument("--backend", choices=["numpy", "cupy"], default=None)

    fs = sub.add_parser("fewshot", help="linear few-shot accuracy and a linear probe on a checkpoint's frozen features",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fs.add_argument("checkpoint")
    fs.add_argument("--data", default=None, help="images whose classes are to be told apart (default: the "
                    "data the checkpoint was trained on); its train split gives the shots, its test split the score")
    fs.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 25], help="training images per class")
    fs.add_argument("--draws", type=int, default=5, help="random draws of the shots, averaged")
    fs.add_argument("--l2", type=float, default=100.0, help="ridge penalty of the least-squares map (on standardised features)")
    fs.add_argument("--pool", choices=["token", "gap"], default=None,
                    help="the representation: the class token or the mean of the patch tokens after the final "
                         "LayerNorm (default: what the model's head reads; a masked-patch-prediction model never "
                         "trains its class token, so 'gap' is its natural choice)")
    fs.add_argument("--no-probe", action="store_true", help="skip the logistic-regression probe on all training images")
    fs.add_argument("--seed", type=int, default=0)
    fs.add_argument("--backend", choices=["numpy", "cupy"], default=None)
    fs.add_argument("--json", action="store_true", help="print one JSON object, nothing else")

    m = sub.add_parser("make-subset", help="build the shipped class-balanced CIFAR-10 subset from an image-folder archive")
    m.add_argument("source", help="e.g. ../shared/datasets/cifar10-jpeg.tar.gz")
    m.add_argument("--dest", default=None)
    m.add_argument("--train-per-class", type=int, default=500)
    m.add_argument("--test-per-class", type=int, default=100)
    return p

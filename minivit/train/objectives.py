"""What a run minimises and reports, chosen once from the model's head (as posembed.VARIANTS chooses
a position embedding), so the trainer and the engine never ask which head a model has.

An objective answers the trainer's questions:
    targets(x, y, cfg, tcfg, mean, std, step, partner=None)  a training batch's inputs and targets
    draw_plan(seed, step, B, cfg)               what a batch draws once for all its shards (or None)
    shard_plan(plan, sl, xp)                    a shard's rows of that plan
    step(params, x, y, cfg, label_smoothing, share, rng, plan) -> loss, correct, grads of one shard
    eval_targets(x, labels, mean, std, cfg)     an evaluation batch's targets
    score(engine, params, x, y, first, cfg, label_smoothing) -> loss sum, correct, count, predictions
and names what it reports (`metric`, `curve`). Two objectives exist:

    classification            ViTConfig.head = "classify", and every CNN: labels, cross-entropy, accuracy
    masked patch prediction   ViTConfig.head = "mpp": pre-training on the patches' colours (paper B.1.2)
"""
from typing import Callable, NamedTuple

import numpy as np

from ..backend import get_array_module, to_numpy, xp as backend_xp
from ..data.transforms import mix_batch
from ..layers.loss import check_labels, cross_entropy
from ..models.families import family_of
from ..models.mpp import colour_targets, corruption_plan, mpp_loss, mpp_step, plan_rows


class Objective(NamedTuple):
    name: str                   # the ViTConfig.head it serves
    metric: str                 # what the test accuracy measures, in the run's last line
    curve: str                  # the accuracy panel's label in curves.png
    check_settings: Callable    # (tcfg, model_overrides) -> None, or a ValueError naming the flag
    check_data: Callable        # (cfg, dataset) -> None, or a ValueError
    targets: Callable
    draw_plan: Callable
    shard_plan: Callable
    step: Callable
    check_targets: Callable     # (y, cfg): after a non-finite loss, name a bad target if there is one
    eval_targets: Callable
    score: Callable


# ---------------------------------------------------------------- classification

def _classify_check_data(cfg, dataset):
    if len(dataset.classes) != cfg.num_classes:
        raise ValueError(f"the data has {len(dataset.classes)} classes but the model has "
                         f"num_classes={cfg.num_classes}")


def _classify_targets(x, y, cfg, tcfg, mean, std, step, partner=None):
    """The labels; with MixUp or CutMix, blended images and soft targets (B, K) (default_rng([seed, step, 3])).
    `partner`: where each image's partner is, when x is an MPI rank's share of the batch (batches.batch_positions)."""
    if tcfg.mixup or tcfg.cutmix:
        return mix_batch(x, y, cfg.num_classes, np.random.default_rng([tcfg.seed, step, 3]), tcfg.mixup, tcfg.cutmix,
                         partner)
    return x, y


def classify_step(params, x, y, cfg, label_smoothing, share, rng, plan=None):
    """One shard of a training step: loss (times the shard's `share` of the batch), number
    correct, gradients of the scaled loss."""
    model = family_of(cfg)                      # the ViT, or the comparison CNN (minivit/models/families.py)
    logits, cache = model.forward(params, x, cfg, train=True, rng=rng)
    loss, dlogits = cross_entropy(logits, y, label_smoothing)   # y: labels (B,), or MixUp/CutMix targets (B, K)
    if share != 1.0:                            # (one shard, as on a GPU: nothing to scale)
        loss, dlogits = loss * share, dlogits * share
    grads = model.backward(dlogits, cache)
    label = y if y.ndim == 1 else y.argmax(axis=1)   # mixed targets: the larger share counts as the label
    return loss, (logits.argmax(axis=1) == label).sum(), grads


def _classify_check_targets(y, cfg):
    if y.ndim == 1:  # on a GPU a label out of range shows as a NaN loss: name it
        check_labels(y, cfg.num_classes)


def _classify_score(engine, params, x, y, first, cfg, label_smoothing):
    """Cross-entropy summed over the batch, number right, count, predicted classes (numpy)."""
    logits = engine.predict_logits(params, x)
    loss, _ = cross_entropy(logits, y, label_smoothing)
    preds = to_numpy(logits.argmax(axis=1))
    return float(loss) * len(y), float((preds == to_numpy(y)).sum()), len(y), preds


CLASSIFICATION = Objective(
    name="classify", metric="test accuracy", curve="accuracy",
    check_settings=lambda tcfg, overrides: None, check_data=_classify_check_data, targets=_classify_targets,
    draw_plan=lambda seed, step, B, cfg: None, shard_plan=lambda plan, sl, xp: None, step=classify_step,
    check_targets=_classify_check_targets, eval_targets=lambda x, labels, mean, std, cfg: backend_xp().asarray(labels),
    score=_classify_score)


# ---------------------------------------------------------------- masked patch prediction (minivit/models/mpp.py)

def _mpp_check_settings(tcfg, overrides):
    if tcfg.mixup or tcfg.cutmix:
        raise ValueError("--mixup and --cutmix mix class labels; masked patch prediction has none (drop them for pretrain)")
    if overrides.get("num_classes") is not None:
        raise ValueError("--num-classes sets the class head; masked patch prediction has a colour head instead "
                         "(drop it for pretrain; `minivit finetune` makes the class head for the new data)")


def _mpp_score(engine, params, x, colours, first, cfg, label_smoothing, seed=0):
    """Cross-entropy summed over the corrupted patches, the number right, their count (no predictions).

    The corruption of the batch starting at image `first` is drawn from default_rng([seed, first]),
    so every evaluation corrupts the same images the same way and epochs compare fairly."""
    plan = corruption_plan(np.random.default_rng([seed, first]), len(x), cfg.num_patches)
    xp = get_array_module(x)

    def shard(sl):
        loss, _, logits, target, _ = mpp_loss(params, x[sl], colours[sl], cfg, plan_rows(plan, sl, xp), label_smoothing)
        return float(loss) * target.size, float((logits.argmax(axis=2) == target).sum()), target.size

    total, correct, count = 0.0, 0.0, 0
    for l_, c_, n_ in engine.map(shard, engine.shards(len(x))):
        total, correct, count = total + l_, correct + c_, count + n_
    return total, correct, count, None


MASKED_PATCHES = Objective(
    name="mpp", metric="masked-patch colour accuracy on the test images",
    curve="masked patches: 3-bit colour accuracy",
    check_settings=_mpp_check_settings, check_data=lambda cfg, dataset: None,
    targets=lambda x, y, cfg, tcfg, mean, std, step, partner=None: (x, colour_targets(x, mean, std, cfg)),   # (B, N) colours
    draw_plan=lambda seed, step, B, cfg: corruption_plan(np.random.default_rng([seed, step, 2]), B, cfg.num_patches),
    shard_plan=plan_rows, step=mpp_step, check_targets=lambda y, cfg: None,
    eval_targets=lambda x, labels, mean, std, cfg: colour_targets(x, mean, std, cfg), score=_mpp_score)


OBJECTIVES = {o.name: o for o in (CLASSIFICATION, MASKED_PATCHES)}


def objective_of(cfg):
    """The Objective a model config trains for: by ViTConfig.head (a CNNConfig's is 'classify')."""
    return OBJECTIVES[cfg.head]

"""Classification: the objective of ViTConfig.head = "classify" and of every CNN. Labels, cross-entropy,
accuracy.

An objective is a module of plain functions, chosen once from the model's head (models/objectives.py),
so the trainer and the engine never ask which head a model has. Its functions answer them:
    check_settings(tcfg, overrides)              a ValueError naming a flag that does not fit
    check_data(cfg, dataset)                     a ValueError when the data does not fit the model
    targets(x, y, cfg, tcfg, mean, std, rng, partner=None)  a training batch's inputs and targets, `rng` the
                                                 step's mixing stream (train/random_streams.py)
    draw_plan(rng, B, cfg)                       what a batch draws once for all its shards (or None),
                                                 `rng` the step's masks stream
    shard_plan(plan, rows, xp)                   a shard's rows of that plan
    step(params, x, y, cfg, label_smoothing, share, rng, plan) -> loss, correct, grads of one shard
    check_targets(y, cfg)                        after a non-finite loss: name a bad target
    eval_targets(x, labels, mean, std, cfg)      an evaluation batch's targets
    score(engine, params, x, y, first, cfg, label_smoothing, seed) -> loss sum, correct, count, predictions
and names what it reports (METRIC, CURVE). The other objective is masked patch prediction (models/mpp.py).
"""
from ..backend import to_numpy, xp as backend_xp
from ..data.transforms import mix_batch, tta_views
from ..layers.loss import check_labels, cross_entropy
from .families import family_of

NAME = "classify"
METRIC = "test accuracy"        # what the run's last line reports
CURVE = "accuracy"              # the accuracy panel's label in curves.png


def check_settings(tcfg, overrides):
    return None


def check_data(cfg, dataset):
    if len(dataset.classes) != cfg.num_classes:
        raise ValueError(f"the data has {len(dataset.classes)} classes but the model has "
                         f"num_classes={cfg.num_classes}")


def targets(x, y, cfg, tcfg, mean, std, rng, partner=None):
    """The labels; with MixUp or CutMix, blended images and soft targets (B, K), drawn from `rng` (the step's
    mixing stream). `partner`: where each image's partner is, when x is an MPI rank's share of the batch
    (batches.batch_positions)."""
    if tcfg.mixup or tcfg.cutmix:
        return mix_batch(x, y, cfg.num_classes, rng, tcfg.mixup, tcfg.cutmix, partner)
    return x, y


def draw_plan(rng, B, cfg):
    return None


def shard_plan(plan, rows, xp):
    return None


def step(params, x, y, cfg, label_smoothing, share, rng, plan=None):
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


def check_targets(y, cfg):
    if y.ndim == 1:  # on a GPU a label out of range shows as a NaN loss: name it
        check_labels(y, cfg.num_classes)


def eval_targets(x, labels, mean, std, cfg):
    return backend_xp().asarray(labels)


def tta_logits(engine, params, x, tta=""):
    """The logits of x, or with test-time augmentation the weighted mean of its views' logits (tta_views)."""
    views = tta_views(x, tta)
    return sum(w * engine.predict_logits(params, view) for w, view in views) if len(views) > 1 else \
        engine.predict_logits(params, x)


def score(engine, params, x, y, first, cfg, label_smoothing, seed=0, tta=""):
    """Cross-entropy summed over the batch, number right, count, predicted classes (numpy); with `tta`, of the
    views' mean logits."""
    logits = tta_logits(engine, params, x, tta)
    loss, _ = cross_entropy(logits, y, label_smoothing)
    preds = to_numpy(logits.argmax(axis=1))
    return float(loss) * len(y), float((preds == to_numpy(y)).sum()), len(y), preds

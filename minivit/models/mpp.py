"""Masked patch prediction: the paper's self-supervised pre-training (section 4.6, Appendix B.1.2).

"We corrupt 50% of patch embeddings by either replacing their embeddings with a learnable [mask]
embedding (80%), a random other patch embedding (10%) or just keeping them as is (10%). [...]
Finally we predict the 3-bit, mean colour (i.e., 512 colors in total) of every corrupted patch
using their respective patch representations."

    tok  = x_p E                            (B, N, D)    the patch embeddings (model.embed_patches)
    tok' = corrupt(tok)                     half of each image's patches chosen; of those, 80% show
                                            [mask], 10% another patch of the same image (the paper
                                            says "a random other patch": the same image is minivit's
                                            choice), 10% themselves
    z    = encode(tok')                     (B, N+1, D)  the encoder, unchanged (model.encode)
    y    = z[chosen] W_mpp + b_mpp          (B, M, 512)  one linear head over each chosen patch's token
    loss = CE(y, colour(chosen patches))    colour: each channel's mean over the patch, in 8 levels

It is BERT's masked language model with patches for words and a patch's mean colour for its
identity. The targets come from the images themselves, so every training image can be used
without its label. The [mask] token and the colour head replace the class head
(`ViTConfig.head = "mpp"`); fine-tuning drops them and puts a zero class head on the encoder.
Derivations: docs/derivations/pretrain.md.
"""
from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from ..layers.linear import linear_backward, linear_forward
from ..layers.loss import cross_entropy
from .mpp_shapes import LEVELS, mpp_classes, mpp_shapes  # noqa: F401  (minivit.models.mpp.mpp_classes)
from .vit import embed_patches, embed_patches_backward, encode, encode_backward, param_shapes


MASK_RATE = 0.5             # the share of each image's patches that are corrupted and predicted
SHOW = (0.8, 0.1, 0.1)      # of those: [mask], another patch's embedding, the patch itself


def colour_targets(x, mean, std, cfg):
    """Normalised images x (B, C, H, W) -> (B, N) integer mean colours, patches in token order.

    Normalisation is undone per channel (pixel = x * std + mean, in [0, 1]); each patch's mean
    per channel falls into one of 8 equal levels, and the levels read as the digits of a base-8
    number, red first: 64 r + 8 g + b. With a hybrid stem a token's patch covers
    image_size / grid pixels per side of the image."""
    xp = get_array_module(x)
    B, C, H, W = x.shape
    g = cfg.grid
    s = H // g                                                         # patch side in image pixels
    m = x.reshape(B, C, g, s, g, s).mean(axis=(3, 5))                  # (B, C, g, g) normalised means
    m = m * xp.asarray(std, dtype=x.dtype).reshape(1, C, 1, 1) + xp.asarray(mean, dtype=x.dtype).reshape(1, C, 1, 1)
    level = xp.clip(xp.floor(m * LEVELS), 0, LEVELS - 1).astype(xp.int64)  # (B, C, g, g) in 0..7
    colour = level[:, 0]
    for c in range(1, C):
        colour = colour * LEVELS + level[:, c]                         # (B, g, g)
    return colour.reshape(B, g * g)                                    # (B, N), row by row like the tokens


class MPPCache(NamedTuple):
    cfg: object
    z_shape: tuple      # (B, N+1, D): the encoder's output
    embed: object       # the patch embedding's caches
    corruption: object  # the Corruption plan
    encoder: object     # EncoderCache (minivit/models/vit.py)
    head: object        # the colour head's dense-layer cache


class Corruption(NamedTuple):
    """Which patches are corrupted and how; the same arrays serve forward and backward."""
    chosen: object   # (B, M) int: the corrupted (and predicted) patches of each image, ascending
    masked: object   # (B, N) bool: positions that show the [mask] embedding
    source: object   # (B, N) int: the patch each position shows (itself unless swapped)
    swap_b: object   # (S,) int: image of each swapped position
    swap_i: object   # (S,) int: the swapped position; it shows patch source[swap_b, swap_i]


def corruption_plan(rng, B, N, xp=np, rate=MASK_RATE, show=SHOW):
    """Draw which patches to corrupt, on the host from `rng`; the arrays go to backend xp.

    M = round(rate * N) patches of every image are chosen (at least one); each chosen patch
    independently shows [mask] (probability show[0]), another patch of the same image, drawn
    uniformly from the other N - 1 (show[1]), or itself (show[2])."""
    M = max(1, int(round(rate * N)))
    chosen = np.sort(np.argsort(rng.random((B, N)), axis=1)[:, :M], axis=1)      # (B, M)
    how = np.searchsorted(np.cumsum(show)[:-1], rng.random((B, M)), side="right")  # 0 mask, 1 swap, 2 keep
    rows = np.arange(B)[:, None]
    masked = np.zeros((B, N), dtype=bool)
    masked[rows, chosen] = how == 0                                                # (B, N)
    source = np.tile(np.arange(N), (B, 1))                                         # (B, N)
    swap_b, swap_j = np.nonzero(how == 1)
    swap_i = chosen[swap_b, swap_j]
    if N > 1:  # "a random other patch": an offset of 1 .. N-1 never lands on the patch itself
        source[swap_b, swap_i] = (swap_i + rng.integers(1, N, size=len(swap_i))) % N
    return Corruption(*(xp.asarray(a) for a in (chosen, masked, source, swap_b, swap_i)))


def corrupt_forward(tok, mask_token, plan):
    """tok (B, N, D), mask_token (1, 1, D) -> the corrupted tokens (B, N, D)."""
    xp = get_array_module(tok)
    shown = tok[xp.arange(tok.shape[0])[:, None], plan.source]            # (B, N, D): swaps read another patch
    return xp.where(plan.masked[..., None], mask_token, shown), plan      # (B, N, D)


def corrupt_backward(dout, plan):
    """dout (B, N, D) -> dtok (B, N, D), dmask_token (1, 1, D)."""
    xp = get_array_module(dout)
    m = plan.masked[..., None]                                            # (B, N, 1)
    dmask_token = xp.where(m, dout, 0).sum(axis=(0, 1), keepdims=True)    # (1, 1, D): every [mask] is one parameter
    dtok = xp.where(m, 0, dout)                                           # (B, N, D): each position shows itself ...
    b, i = plan.swap_b, plan.swap_i
    moved = dtok[b, i]                                                    # (S, D) ... except the swapped ones,
    dtok[b, i] = 0                                                        # whose gradient goes to the patch they
    xp.add.at(dtok, (b, plan.source[b, i]), moved)                        # show (add.at: a patch may be shown twice)
    return dtok, dmask_token


def mpp_forward(params, x, cfg, plan, train=False, rng=None, keep_cache=True):
    """x (B, C, H, W) -> colour logits of the chosen patches (B, M, 512), cache."""
    xp = get_array_module(x)
    tok, c_embed = embed_patches(params, x, cfg)                              # (B, N, D)
    tok, c_corrupt = corrupt_forward(tok, params["mask_token"], plan)         # (B, N, D)
    z, c_enc = encode(params, tok, cfg, train, rng, keep_cache)               # (B, N+1, D)
    rows = xp.arange(z.shape[0])[:, None]
    picked = z[rows, 1 + plan.chosen]                                         # (B, M, D): token 0 is the class token
    logits, c_head = linear_forward(picked, params["mpp_head.w"], params["mpp_head.b"])  # (B, M, K)
    if not keep_cache:
        return logits, None
    return logits, MPPCache(cfg, z.shape, c_embed, c_corrupt, c_enc, c_head)


def mpp_backward(dlogits, cache):
    """dlogits (B, M, K) -> grads: a dict with the same keys and shapes as params."""
    cfg, z_shape, c_embed, plan, c_enc, c_head = cache
    xp = get_array_module(dlogits)
    grads = {}
    dpicked, grads["mpp_head.w"], grads["mpp_head.b"] = linear_backward(dlogits, c_head)  # (B, M, D)
    dz = xp.zeros(z_shape, dtype=dlogits.dtype)                                         # (B, N+1, D)
    dz[xp.arange(z_shape[0])[:, None], 1 + plan.chosen] = dpicked   # distinct positions per image: no repeats
    dtok = encode_backward(dz, c_enc, grads)                                            # (B, N, D)
    dtok, grads["mask_token"] = corrupt_backward(dtok, plan)
    embed_patches_backward(dtok, c_embed, grads)
    return {k: grads[k] for k in param_shapes(cfg)}


def mpp_loss(params, x, colours, cfg, plan, label_smoothing=0.0, train=False, rng=None):
    """Mean cross-entropy over the chosen patches, its logits (B, M, K) and targets (B, M), and the cache."""
    logits, cache = mpp_forward(params, x, cfg, plan, train, rng)
    xp = get_array_module(logits)
    target = colours[xp.arange(len(colours))[:, None], plan.chosen]          # (B, M)
    B, M, K = logits.shape
    loss, dlogits = cross_entropy(logits.reshape(B * M, K), target.reshape(B * M), label_smoothing)
    return loss, dlogits.reshape(B, M, K), logits, target, cache


def mpp_step(params, x, colours, cfg, label_smoothing, share, rng, plan):
    """One shard of a pre-training step (train.Engine): loss, correct, grads.

    `plan`: this shard's rows of the batch's Corruption (plan_rows). `share` scales the loss to the
    shard's part of the batch; `correct` counts right colours in images' worth (right predictions
    / M), so that correct / images is the patch accuracy."""
    loss, dlogits, logits, target, cache = mpp_loss(params, x, colours, cfg, plan, label_smoothing, True, rng)
    if share != 1.0:
        loss, dlogits = loss * share, dlogits * share
    grads = mpp_backward(dlogits, cache)
    return loss, (logits.argmax(axis=2) == target).sum() / target.shape[1], grads


def plan_rows(plan, sl, xp=np):
    """The images in slice `sl` of a NumPy Corruption, on backend xp: a batch's plan is drawn once
    and cut into the shards that run it, so the draws do not depend on the number of threads."""
    keep = (plan.swap_b >= sl.start) & (plan.swap_b < sl.stop)
    rows = (plan.chosen[sl], plan.masked[sl], plan.source[sl], plan.swap_b[keep] - sl.start, plan.swap_i[keep])
    return Corruption(*(xp.asarray(a) for a in rows))




# ---------------------------------------------------------------- the objective (the questions of models/classify.py)

NAME = "mpp"
METRIC = "masked-patch colour accuracy on the test images"
CURVE = "masked patches: 3-bit colour accuracy"


def check_settings(tcfg, overrides):
    if tcfg.mixup or tcfg.cutmix:
        raise ValueError("--mixup and --cutmix mix class labels; masked patch prediction has none (drop them for pretrain)")
    if tcfg.tta:
        raise ValueError("--tta averages a classifier's logits over mirrored views; a masked patch's colours have no "
                         "such view (drop it for pretrain)")
    if overrides.get("num_classes") is not None:
        raise ValueError("--num-classes sets the class head; masked patch prediction has a colour head instead "
                         "(drop it for pretrain; `minivit finetune` makes the class head for the new data)")


def check_data(cfg, dataset):
    return None


def targets(x, y, cfg, tcfg, mean, std, rng, partner=None):
    """The images, and their patches' colours (B, N) as the targets: the labels are not read."""
    return x, colour_targets(x, mean, std, cfg)


def draw_plan(rng, B, cfg):
    """The batch's corruption, drawn once for all its shards from `rng` (the step's masks stream)."""
    return corruption_plan(rng, B, cfg.num_patches)


shard_plan = plan_rows
step = mpp_step


def check_targets(y, cfg):
    return None


def eval_targets(x, labels, mean, std, cfg):
    return colour_targets(x, mean, std, cfg)


def score(engine, params, x, colours, first, cfg, label_smoothing, seed=0, tta=""):
    """Cross-entropy summed over the corrupted patches, the number right, their count (no predictions). `tta` is
    a classifier's (test-time augmentation of its logits); the colours of a corrupted patch have no mirror view.

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

"""From uint8 images to a training batch: per-channel statistics and normalisation, random crop and
flip, and MixUp/CutMix (docs/augmentation.md)."""
import numpy as np

from ..backend import get_array_module


# The smallest standard deviation normalisation divides by: one grey level. A channel that never varies
# (all-black images, a zeroed blue channel) would otherwise divide by 0 and make every input NaN; with
# the floor it normalises to 0, and pixel = x * std + mean still gives the pixels back exactly.
MIN_STD = 1.0 / 255.0


def channel_stats(images):
    """Per-channel mean and std of uint8 images (N, C, H, W), on the 0..1 scale; the std at least MIN_STD."""
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)), np.maximum(x.std(axis=(0, 2, 3)), MIN_STD)


def normalize(images, mean, std, xp=np, dtype="float32"):
    """uint8 (B, C, H, W) -> float (B, C, H, W), per-channel (x/255 - mean) / std, on backend xp."""
    x = xp.asarray(images).astype(dtype) / 255.0
    m = xp.asarray(mean, dtype=dtype).reshape(1, -1, 1, 1)
    s = xp.asarray(std, dtype=dtype).reshape(1, -1, 1, 1)
    return (x - m) / s


def augment(images, rng, pad=4, flip=True, keep=None, batch=None):
    """Random crop with zero padding and random horizontal flip of a whole uint8 batch (B, C, H, W).

    One gather with broadcast index arrays does every crop at once: image b takes rows
    oy[b] .. oy[b]+H and columns ox[b] .. ox[b]+W of its padded copy (flipped when asked).
    The random offsets are drawn on the host from `rng` and the gather runs on the images'
    backend, so a batch already on the GPU is augmented there, with the same draws.

    `images` may be only the images at positions `keep` of a batch of `batch` (an MPI rank's share,
    minivit/train/distributed.py): the draws are made for the whole batch and each image takes its own.
    """
    xp = get_array_module(images)
    B, C, H, W = images.shape
    keep = slice(None) if keep is None else keep
    xpad = xp.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oy = rng.integers(0, 2 * pad + 1, batch or B)
    ox = rng.integers(0, 2 * pad + 1, batch or B)
    flipped = rng.random(batch or B) < 0.5 if flip else None
    rows = oy[keep, None] + np.arange(H)                  # (B, H)
    cols = ox[keep, None] + np.arange(W)                  # (B, W)
    if flip:
        cols = np.where(flipped[keep, None], cols[:, ::-1], cols)
    b = np.arange(B)[:, None, None, None]
    c = np.arange(C)[None, :, None, None]
    index = tuple(xp.asarray(i) for i in (b, c, rows[:, None, :, None], cols[:, None, None, :]))
    return xpad[index]  # (B, C, H, W)


def mix_batch(x, labels, num_classes, rng, mixup=0.0, cutmix=0.0, partner=None):
    """MixUp (Zhang et al., 2018) or CutMix (Yun et al., 2019) of a batch with itself reversed.

    x (B, C, H, W) float (normalised), labels (B,) integers -> mixed x, soft targets t (B, K).
    Image b is blended with image B-1-b: MixUp takes lam of one and 1 - lam of the other,
    pixel by pixel; CutMix pastes a box of the other image covering a 1 - lam share of the
    area. Either way t = lam onehot(y_b) + (1 - lam) onehot(y_{B-1-b}), with lam the share
    actually kept (for CutMix, after the box is clipped at the border), and the soft-target
    cross-entropy (minivit/layers/loss.py) trains on it. One lam per batch, drawn from
    Beta(alpha, alpha) on the host from `rng`; with both alphas above 0, each batch is MixUp
    or CutMix with equal chance (as timm's Mixup). The arithmetic runs on x's backend.
    """
    if mixup < 0 or cutmix < 0 or not (mixup or cutmix):
        raise ValueError(f"mix_batch needs mixup >= 0 and cutmix >= 0, one of them above 0; got {mixup}, {cutmix}")
    xp = get_array_module(x)
    B, C, H, W = x.shape
    use_cutmix = cutmix > 0 and (mixup == 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    partner = slice(None, None, -1) if partner is None else partner   # (an MPI rank's images: where B-1-b is)
    other = x[partner]                                       # image B-1-b for image b
    if use_cutmix:
        cut = np.sqrt(1.0 - lam)                             # box sides, as shares of H and W
        h, w = int(H * cut), int(W * cut)
        cy, cx = int(rng.integers(H)), int(rng.integers(W))  # the box's centre, anywhere in the image
        y0, y1 = max(cy - h // 2, 0), min(cy + h - h // 2, H)
        x0, x1 = max(cx - w // 2, 0), min(cx + w - w // 2, W)
        mixed = x.copy()
        mixed[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)          # the share of the image kept
    else:
        mixed = lam * x + (1.0 - lam) * other
    onehot = xp.eye(num_classes, dtype=x.dtype)[xp.asarray(labels)]   # (B, K)
    return mixed, lam * onehot + (1.0 - lam) * onehot[partner]


def tta_views(x, tta):
    """Test-time augmentation: [(weight, view), ...] of a normalised batch x (B, C, H, W), whose logits are
    averaged with these weights (they sum to 1).

        ''           x itself
        flip         x and its mirror image, 1/2 each
        flip-shift   the mirror pair of x (1/2), and the mirror pairs of x moved one pixel down-right and one
                     pixel up-left (1/8 each view), the edge filled by reflection (what the training crops
                     see is padding; a reflected edge keeps the shifted image's statistics)

    The flips and shifts match the training augmentation (random crops of a padded image, mirror images), so
    the model has seen such views."""
    xp = get_array_module(x)
    if not tta:
        return [(1.0, x)]
    pairs = [x]
    if tta == "flip-shift":
        padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
        H, W = x.shape[2:]
        pairs += [padded[:, :, :H, :W], padded[:, :, 2:, 2:]]    # moved down-right, moved up-left
    elif tta != "flip":
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose flip or flip-shift")
    weights = [1.0] if len(pairs) == 1 else [0.5, 0.25, 0.25]   # per mirror pair
    return [(w / 2, view) for w, v in zip(weights, pairs) for view in (v, v[..., ::-1])]

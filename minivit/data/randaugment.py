"""RandAugment (Cubuk et al., 2020) and random erasing (Zhong et al., 2020) on whole batches.

RandAugment gives every image `n` operations drawn uniformly (with replacement) from the
fourteen below, all at one magnitude `m` on a 0-10 scale; the geometric ones and the
enhancements turn left or right, up or down at random. It needs no search over policies: two
numbers, n and m. Random erasing then blanks a random box of some images.

Everything works on a whole batch at once and on the batch's own backend (a batch on the GPU
is augmented there): the random draws come from a NumPy Generator on the host, so NumPy and
CuPy give the same images. For each of the n layers and each operation, the images that drew
that operation are taken out, changed together, and put back.

The pixel operations follow Pillow's `ImageOps`/`ImageEnhance` definitions, which the tests
check them against (`tests/test_randaugment.py`); the formula of each is in its docstring.
The ranges at m = 10 are minivit's, in the spirit of AutoAugment's: rotate 30 degrees, shear
0.3, translate 45% of the side, enhancement factors 1 +- 0.9, solarize above 0 (every pixel),
posterize to 4 bits. Every operation is the identity at m = 0. Geometric operations act about the
image centre, sample the nearest pixel and fill what comes from outside the image with grey 128.
docs/augmentation.md has the table.
"""
import numpy as np

from ..backend import get_array_module

OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize",
       "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
FILL = 128  # what geometric operations bring in from outside the image


# ---------------------------------------------------------------- pixel operations, uint8 (b, C, H, W)

def gray(x):
    """Pillow's convert("L") of (b, 3, H, W) uint8: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16,
    the ITU-R 601-2 luma 0.299 R + 0.587 G + 0.114 B in 16-bit fixed point. One channel: itself."""
    if x.shape[1] != 3:
        return x[:, :1]
    w = x.astype("int32")
    return ((19595 * w[:, 0:1] + 38470 * w[:, 1:2] + 7471 * w[:, 2:3] + 32768) >> 16).astype("uint8")  # (b, 1, H, W)


def blend(degenerate, x, factor):
    """ImageEnhance: degenerate + factor (x - degenerate), clipped to [0, 255] and truncated, as
    Pillow's Image.blend. factor (b,): 0 gives the degenerate image, 1 the image itself."""
    xp = get_array_module(x)
    f = xp.asarray(factor, dtype="float32").reshape(-1, 1, 1, 1)
    d = degenerate.astype("float32")
    return xp.clip(d + f * (x.astype("float32") - d), 0, 255).astype("uint8")


def color(x, factor):
    """Saturation: blend with the grey image (factor 0: grey, 1: unchanged, 2: twice as colourful)."""
    return blend(gray(x), x, factor)


def contrast(x, factor):
    """Blend with a flat image of the grey image's mean, rounded (Pillow: int(mean + 0.5))."""
    g = gray(x)
    mean = (g.reshape(len(g), -1).astype("float64").mean(axis=1) + 0.5).astype("int32")  # (b,)
    return blend(mean.reshape(-1, 1, 1, 1), x, factor)


def brightness(x, factor):
    """Blend with black."""
    return blend(x * 0, x, factor)


def sharpness(x, factor):
    """Blend with Pillow's SMOOTH filter, 3x3 weights [[1,1,1],[1,5,1],[1,1,1]] / 13 rounded to the
    nearest level, on the interior; the one-pixel border keeps its own values."""
    s = x.astype("float32")
    inner = 5 * s[:, :, 1:-1, 1:-1]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if (dy, dx) != (1, 1):
                inner = inner + s[:, :, dy:dy + s.shape[2] - 2, dx:dx + s.shape[3] - 2]
    smooth = x.copy()
    smooth[:, :, 1:-1, 1:-1] = (inner / 13 + 0.5).astype("uint8")
    return blend(smooth, x, factor)


def solarize(x, threshold):
    """Invert every pixel at or above the threshold: x < t ? x : 255 - x. threshold (b,)."""
    xp = get_array_module(x)
    t = xp.asarray(threshold).reshape(-1, 1, 1, 1)
    return xp.where(x < t, x, 255 - x)


def posterize(x, bits):
    """Keep the top `bits` bits of every value (bits (b,), 1..8)."""
    xp = get_array_module(x)
    drop = 8 - xp.asarray(bits, dtype="int32").reshape(-1, 1, 1, 1)
    return ((x.astype("int32") >> drop) << drop).astype("uint8")


def autocontrast(x):
    """Stretch each channel of each image to the full range: lo -> 0, hi -> 255, Pillow's
    int(v * scale + offset) with scale = 255 / (hi - lo), offset = -lo * scale. Flat channels stay."""
    xp = get_array_module(x)
    b, C = x.shape[:2]
    flat = x.reshape(b, C, -1)
    lo = flat.min(axis=2).astype("float64")[:, :, None]
    hi = flat.max(axis=2).astype("float64")[:, :, None]
    flat_channel = hi <= lo
    scale = 255.0 / xp.where(flat_channel, 1.0, hi - lo)
    offset = -lo * scale
    y = xp.clip((flat * scale + offset).astype("int32"), 0, 255).astype("uint8")  # int() truncates, as in Pillow
    return xp.where(flat_channel, flat, y).reshape(x.shape)


def equalize(x):
    """Histogram equalisation of each channel of each image, Pillow's: with h the 256-bin histogram
    and step = (H W - h[last used level]) // 255, level i maps to (step // 2 + sum_{j<i} h[j]) // step;
    a channel with one level, or step 0, stays as it is."""
    xp = get_array_module(x)
    b, C, H, W = x.shape
    flat = x.reshape(b * C, H * W).astype("int64")
    rows = xp.arange(b * C).reshape(-1, 1)
    hist = xp.bincount((rows * 256 + flat).ravel(), minlength=b * C * 256).reshape(b * C, 256)
    top = flat.max(axis=1)                                               # the last used level
    step = (H * W - hist[xp.arange(b * C), top]) // 255                  # (bC,)
    before = xp.cumsum(hist, axis=1) - hist                              # sum_{j<i} h[j]
    safe = xp.maximum(step, 1).reshape(-1, 1)
    lut = xp.minimum((step.reshape(-1, 1) // 2 + before) // safe, 255)   # (bC, 256)
    keep = ((hist > 0).sum(axis=1) <= 1) | (step == 0)
    lut = xp.where(keep.reshape(-1, 1), xp.arange(256), lut)
    return xp.take_along_axis(lut, flat, axis=1).astype("uint8").reshape(x.shape)


# ---------------------------------------------------------------- geometric operations

def affine(x, matrices, fill=FILL):
    """Resample each image through its own affine map, nearest pixel, as Pillow's
    Image.transform(AFFINE, NEAREST): output pixel (col, row) reads input pixel
    floor(a (col + 1/2) + b (row + 1/2) + c), floor(d (col + 1/2) + e (row + 1/2) + f)
    for matrices[i] = (a, b, c, d, e, f); what falls outside the image is `fill`."""
    xp = get_array_module(x)
    b, C, H, W = x.shape
    m = xp.asarray(np.asarray(matrices, dtype="float64").reshape(b, 6, 1, 1))
    col = xp.arange(W, dtype="float64").reshape(1, 1, W) + 0.5
    row = xp.arange(H, dtype="float64").reshape(1, H, 1) + 0.5
    sx = xp.floor(m[:, 0] * col + m[:, 1] * row + m[:, 2]).astype("int64")   # (b, H, W)
    sy = xp.floor(m[:, 3] * col + m[:, 4] * row + m[:, 5]).astype("int64")
    inside = (sx >= 0) & (sx < W) & (sy >= 0) & (sy < H)
    src = xp.where(inside, sy * W + sx, 0).reshape(b, 1, H * W)
    out = xp.take_along_axis(x.reshape(b, C, H * W), xp.broadcast_to(src, (b, C, H * W)), axis=2)
    return xp.where(inside.reshape(b, 1, H * W), out, xp.asarray(fill, dtype=x.dtype)).reshape(x.shape)


def about_centre(linear, shift, H, W):
    """Affine matrices (b, 6) that apply the (b, 2, 2) linear map about the image centre, then read
    `shift` (b, 2) pixels further along x and y: source = L (p - centre) + centre + shift."""
    linear = np.asarray(linear, dtype="float64")
    centre = np.array([W / 2.0, H / 2.0])
    t = centre - linear @ centre + np.asarray(shift, dtype="float64")   # (b, 2)
    return np.concatenate([linear[:, 0], t[:, :1], linear[:, 1], t[:, 1:]], axis=1)


def rotate(x, degrees):
    """Turn each image counter-clockwise by its angle, as Pillow's Image.rotate (degrees (b,))."""
    r = np.radians(np.asarray(degrees, dtype="float64"))
    c, s = np.round(np.cos(r), 15), np.round(np.sin(r), 15)   # as Pillow rounds them
    linear = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)          # (b, 2, 2)
    return affine(x, about_centre(linear, np.zeros((len(r), 2)), *x.shape[2:]))


def shear(x, amount, axis):
    """Shear each image about its centre: along x, column c of row r reads column c + amount (r - centre)."""
    k = np.asarray(amount, dtype="float64")
    linear = np.tile(np.eye(2), (len(k), 1, 1))
    if axis == "x":
        linear[:, 0, 1] = k
    else:
        linear[:, 1, 0] = k
    return affine(x, about_centre(linear, np.zeros((len(k), 2)), *x.shape[2:]))


def translate(x, pixels, axis):
    """Move each image's content by `pixels` (b,) to the left (x) or up (y); negative: the other way."""
    p = np.asarray(pixels, dtype="float64")
    shift = np.stack([p, 0 * p], 1) if axis == "x" else np.stack([0 * p, p], 1)
    return affine(x, about_centre(np.tile(np.eye(2), (len(p), 1, 1)), shift, *x.shape[2:]))


# ---------------------------------------------------------------- RandAugment

def apply_op(name, x, m, sign):
    """Operation `name` at magnitude m (0..10) on the uint8 batch x (b, C, H, W); sign (b,) of +-1
    turns the geometric operations and the enhancements one way or the other."""
    level = m / 10.0
    H, W = x.shape[2:]
    if name == "identity":
        return x
    if name == "autocontrast":
        return autocontrast(x)
    if name == "equalize":
        return equalize(x)
    if name == "rotate":
        return rotate(x, 30.0 * level * sign)
    if name == "solarize":
        return solarize(x, np.full(len(x), int(256 - 256 * level)))
    if name == "posterize":
        return posterize(x, np.full(len(x), 8 - int(round(4 * level))))
    if name in ("color", "contrast", "brightness", "sharpness"):
        enhance = {"color": color, "contrast": contrast, "brightness": brightness, "sharpness": sharpness}[name]
        return enhance(x, 1.0 + 0.9 * level * sign)
    if name in ("shear_x", "shear_y"):
        return shear(x, 0.3 * level * sign, name[-1])
    if name in ("translate_x", "translate_y"):
        side = W if name == "translate_x" else H
        return translate(x, np.round(0.45 * side * level * sign), name[-1])
    raise ValueError(f"unknown RandAugment operation {name!r}; choose one of {', '.join(OPS)}")


def rand_augment(images, rng, n=2, m=9.0, keep=None, batch=None):
    """RandAugment of a uint8 batch (B, C, H, W) -> (B, C, H, W) uint8, on the images' backend.

    For each of n layers every image draws one of OPS uniformly and a sign; then each operation
    runs once, on all the images that drew it. Draws come from the NumPy Generator `rng`. `images`
    may be the images at positions `keep` of a batch of `batch`: each takes its own of the batch's draws."""
    if n < 0 or not 0 <= m <= 10:
        raise ValueError(f"RandAugment needs n >= 0 layers and a magnitude 0 <= m <= 10; got n={n}, m={m}")
    xp = get_array_module(images)
    x = images.copy()
    B, keep = batch or len(x), slice(None) if keep is None else keep
    for _ in range(n):
        op = rng.integers(0, len(OPS), B)[keep]               # (B,) which operation each image gets
        sign = np.where(rng.random(B) < 0.5, -1.0, 1.0)[keep]  # (B,) which way it turns
        for k, name in enumerate(OPS):
            picked = np.flatnonzero(op == k)
            if name != "identity" and len(picked):
                idx = xp.asarray(picked)
                x[idx] = apply_op(name, x[idx], m, sign[picked])
    return x


# ---------------------------------------------------------------- random erasing

def erase_boxes(rng, B, H, W, p, area=(0.02, 1 / 3), ratio=(0.3, 3.3), attempts=10):
    """Draw random-erasing boxes: each image with probability p gets one box of a random share
    `area` of the image and aspect ratio (log-uniform in `ratio`); a box that does not fit is
    drawn again, up to `attempts` times, then the image is left alone. Returns top, left, height,
    width (B,) integer arrays, height 0 for an image without a box."""
    erase = rng.random(B) < p
    a = rng.uniform(*area, (B, attempts)) * H * W
    r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (B, attempts)))
    h = np.round(np.sqrt(a * r)).astype(int)
    w = np.round(np.sqrt(a / r)).astype(int)
    fits = (h < H) & (w < W) & (h > 0) & (w > 0)
    first = fits.argmax(axis=1)                                  # the first attempt that fits
    ok = erase & fits.any(axis=1)
    rows = np.arange(B)
    h, w = np.where(ok, h[rows, first], 0), np.where(ok, w[rows, first], 0)
    top = (rng.random(B) * (H - h + 1)).astype(int)              # uniform in 0 .. H - h
    left = (rng.random(B) * (W - w + 1)).astype(int)
    return top, left, h, w


def random_erase(x, rng, p=0.25, keep=None, batch=None):
    """Random erasing of a normalised float batch x (B, C, H, W): each erased box is set to 0, which
    after normalisation is the dataset's mean colour. Returns a new array. x may be the images at
    positions `keep` of a batch of `batch`: each takes its own of the batch's boxes."""
    xp = get_array_module(x)
    B, C, H, W = x.shape
    keep = slice(None) if keep is None else keep
    top, left, h, w = (xp.asarray(v[keep]).reshape(B, 1, 1, 1) for v in erase_boxes(rng, batch or B, H, W, p))
    row = xp.arange(H).reshape(1, 1, H, 1)
    col = xp.arange(W).reshape(1, 1, 1, W)
    box = (row >= top) & (row < top + h) & (col >= left) & (col < left + w)   # (B, 1, H, W)
    return xp.where(box, xp.zeros((), dtype=x.dtype), x)

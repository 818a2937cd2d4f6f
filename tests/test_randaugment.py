"""RandAugment and random erasing (minivit/data/randaugment.py): each operation against Pillow's own,
geometric operations against exact pixel moves, the batch-level draws, and the trainer's use."""
import numpy as np
import pytest

import minivit as mv
from minivit.data import randaugment as ra
from minivit.train import TrainConfig, make_batch
from helpers import full_and_resumed, toy_dataset

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

rng = np.random.default_rng(0)


def photos(b=5, size=(3, 12, 10)):
    """Smooth random images (gradients plus noise), so histograms and blurs are not trivial;
    the last one is flat in one channel, which autocontrast and equalize must leave alone."""
    C, H, W = size
    base = np.linspace(0, 1, H)[:, None] * rng.random((b, C, 1, 1)) + np.linspace(0, 1, W)[None] * rng.random((b, C, 1, 1))
    x = np.clip(base * 160 + rng.normal(0, 20, (b, C, H, W)) + 30, 0, 255).astype(np.uint8)
    x[-1, 1] = 77
    return x


def pil(x):
    return Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)))


def unpil(im):
    return np.asarray(im).transpose(2, 0, 1)


def each(x, fn):
    """Pillow's answer, image by image."""
    return np.stack([unpil(fn(pil(img), i)) for i, img in enumerate(x)])


def assert_close_to_pillow(ours, theirs, max_diff=0):
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= max_diff, f"max difference {diff.max()} levels"


@pytest.mark.parametrize("name", ["color", "contrast", "brightness", "sharpness"])
def test_enhancements_match_pillow(name):
    x = photos()
    factors = np.array([0.1, 0.55, 1.0, 1.45, 1.9])
    ours = getattr(ra, name)(x, factors)
    enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}[name]
    theirs = each(x, lambda im, i: enhancer(im).enhance(factors[i]))
    assert_close_to_pillow(ours, theirs, max_diff=1)   # float32 here, Pillow's own rounding there
    np.testing.assert_array_equal(ours[2], x[2])       # factor 1 is the image itself


def test_lut_operations_match_pillow():
    x = photos(5, (3, 32, 32))   # equalize needs over 255 pixels to change anything (Pillow's step)
    assert_close_to_pillow(ra.autocontrast(x), each(x, lambda im, i: ImageOps.autocontrast(im)))
    assert_close_to_pillow(ra.equalize(x), each(x, lambda im, i: ImageOps.equalize(im)))
    assert not np.array_equal(ra.equalize(x), x)
    thresholds, bits = np.array([0, 64, 128, 200, 256]), np.array([1, 3, 4, 6, 8])
    assert_close_to_pillow(ra.solarize(x, thresholds), each(x, lambda im, i: ImageOps.solarize(im, int(thresholds[i]))))
    assert_close_to_pillow(ra.posterize(x, bits), each(x, lambda im, i: ImageOps.posterize(im, int(bits[i]))))


def test_affine_matches_pillow_nearest():
    x = photos(4)
    H, W = x.shape[2:]
    # Random maps (Pillow walks the rows by adding a and d, so a source coordinate that is exactly an
    # integer may floor differently there; random entries keep the test away from such ties).
    m = np.eye(2, 3).ravel() + rng.uniform(-0.4, 0.4, (4, 6)) * [1, 1, 8, 1, 1, 8]
    theirs = each(x, lambda im, i: im.transform((W, H), Image.Transform.AFFINE, tuple(m[i]),
                                                Image.Resampling.NEAREST, fillcolor=(128, 128, 128)))
    assert_close_to_pillow(ra.affine(x, m), theirs)


def test_rotate_matches_pillow_and_quarter_turns_are_exact():
    x = photos(3, (3, 10, 10))
    angles = np.array([17.0, -30.0, 90.0])
    theirs = each(x, lambda im, i: im.rotate(angles[i], Image.Resampling.NEAREST, fillcolor=(128, 128, 128)))
    assert_close_to_pillow(ra.rotate(x, angles), theirs)
    np.testing.assert_array_equal(ra.rotate(x, np.full(3, 90.0)), np.rot90(x, 1, axes=(2, 3)))  # counter-clockwise


def test_translate_and_shear_move_pixels_as_stated():
    x = photos(2)
    moved = ra.translate(x, np.array([3, -2]), "x")
    np.testing.assert_array_equal(moved[0, :, :, :-3], x[0, :, :, 3:])     # content moved 3 to the left
    np.testing.assert_array_equal(moved[1, :, :, 2:], x[1, :, :, :-2])     # and 2 to the right
    assert np.all(moved[0, :, :, -3:] == ra.FILL) and np.all(moved[1, :, :, :2] == ra.FILL)
    down = ra.translate(x, np.array([-1, 0]), "y")
    np.testing.assert_array_equal(down[0, :, 1:], x[0, :, :-1])
    np.testing.assert_array_equal(down[1], x[1])
    H, W = x.shape[2:]
    sheared = ra.shear(x, np.array([0.25, 0.0]), "x")    # row r reads columns shifted by 0.25 (r + 1/2 - H/2)
    for r in range(H):
        s = int(np.floor(0.25 * (r + 0.5 - H / 2) + 0.5))  # column 0's centre lands in source column s
        cols = np.arange(W) + s
        ok = (cols >= 0) & (cols < W)
        np.testing.assert_array_equal(sheared[0, :, r, ok], x[0, :, r, cols[ok]])
    np.testing.assert_array_equal(sheared[1], x[1])


@pytest.mark.parametrize("name", ra.OPS)
def test_every_operation_is_the_identity_at_magnitude_zero(name):
    x = photos(4, (3, 32, 32))
    out = ra.apply_op(name, x, 0.0, np.array([1.0, -1.0, 1.0, -1.0]))
    if name in ("autocontrast", "equalize"):   # these have no magnitude: they change the image anyway
        assert not np.array_equal(out, x)
    else:
        np.testing.assert_array_equal(out, x)


def test_rand_augment_applies_each_images_draws():
    """Replaying the draws image by image through apply_op gives the batch result."""
    x = photos(6, (3, 16, 16))
    n, m = 3, 7.0
    out = ra.rand_augment(x, np.random.default_rng(5), n, m)
    assert out.shape == x.shape and out.dtype == np.uint8
    replay = np.random.default_rng(5)
    expect = x.copy()
    for _ in range(n):
        op, sign = replay.integers(0, len(ra.OPS), 6), np.where(replay.random(6) < 0.5, -1.0, 1.0)
        for b in range(6):
            expect[b:b + 1] = ra.apply_op(ra.OPS[op[b]], expect[b:b + 1], m, sign[b:b + 1])
    np.testing.assert_array_equal(out, expect)
    assert not np.array_equal(out, x)
    np.testing.assert_array_equal(ra.rand_augment(x, np.random.default_rng(5), 0, m), x)
    with pytest.raises(ValueError, match="magnitude"):
        ra.rand_augment(x, np.random.default_rng(0), 2, 11)


def test_random_erasing_boxes():
    B, H, W = 400, 32, 32
    top, left, h, w = ra.erase_boxes(np.random.default_rng(1), B, H, W, p=0.5)
    erased = h > 0
    assert 0.4 < erased.mean() < 0.6                                  # about half the images
    assert np.all((top + h <= H) & (left + w <= W) & (top >= 0) & (left >= 0))
    area = h[erased] * w[erased] / (H * W)
    assert area.min() >= 0.015 and area.max() <= 0.36                # 2% .. 1/3, up to rounding of the sides
    x = rng.standard_normal((B, 3, H, W)).astype(np.float32) + 5
    out = ra.random_erase(x, np.random.default_rng(1), 0.5)
    for b in np.flatnonzero(erased)[:20]:
        box = out[b, :, top[b]:top[b] + h[b], left[b]:left[b] + w[b]]
        assert np.all(box == 0) and (out[b] == 0).sum() == box.size    # the box, and nothing else
    np.testing.assert_array_equal(out[~erased], x[~erased])
    assert out.dtype == x.dtype


def test_make_batch_uses_randaugment_and_erasing_streams():
    data = toy_dataset(16, 4)
    mean, std = np.full(3, 0.5), np.full(3, 0.25)
    plain = TrainConfig(batch_size=8, seed=3, augment=False)
    strong = TrainConfig(batch_size=8, seed=3, augment=False, randaugment=2, randaugment_magnitude=5, random_erasing=1.0)
    x0, y0 = make_batch(data.train, plain, mean, std, 0, 0, step=4)
    x1, y1 = make_batch(data.train, strong, mean, std, 0, 0, step=4)
    np.testing.assert_array_equal(y0, y1)
    idx = np.sort(np.random.default_rng([3, 0]).permutation(16)[:8])
    u8 = ra.rand_augment(data.train.images[idx], np.random.default_rng([3, 4, 4]), 2, 5)
    expect = ra.random_erase(mv.data.normalize(u8, mean, std), np.random.default_rng([3, 4, 5]), 1.0)
    np.testing.assert_array_equal(x1, expect)
    assert not np.array_equal(x0, x1)
    with pytest.raises(ValueError, match="--random-erasing"):
        TrainConfig(random_erasing=1.5)


def test_trainer_with_randaugment_resumes_bit_identically(tmp_path):
    tcfg = TrainConfig(epochs=2, batch_size=8, randaugment=2, random_erasing=0.5, threads=2)
    full_and_resumed(mv.ViTConfig.preset("test"), tcfg, toy_dataset(16, 8), tmp_path)

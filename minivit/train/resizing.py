"""Progressive resizing (--resize-schedule 'R:P,...'): early steps train on R-pixel images until progress P
(the share of the steps, or of the time budget), the same weights throughout.

Everything the trainer does for it is here: the schedule's stages with the model at each size (`stages`,
after checking that the model can follow a smaller grid), the model in force for a step (`model_at`), and
the batch at that size (`resize`). The flag's syntax is parsed and checked with the other settings
(config.resize_stages); the interpolation itself is layer math (layers/resample.py: bicubic images, and the
position table resampled to the batch's grid inside posembed.pos_forward)."""
from dataclasses import replace

from ..config import resize_stages, stage_at
from ..layers.resample import resize_batch


def stages(cfg, schedule):
    """The schedule as [(size, until, the model's config at that size)], after checking that this model can
    train on smaller images: a plain ViT classifier whose position table can follow the grid."""
    parsed = resize_stages(schedule)
    if not parsed:
        return []
    why = ("it is not a ViT" if not hasattr(cfg, "pos_embed") else
           "its head predicts the patches' colours (pretrain)" if cfg.head != "classify" else
           "the hybrid's stem fixes its grid" if cfg.stem_channels else
           f"pos_embed={cfg.pos_embed!r} cannot follow the grid (use learned, sincos or none)"
           if cfg.pos_embed not in ("learned", "sincos", "none") else None)
    if why:
        raise ValueError(f"--resize-schedule trains on smaller images, but this model cannot: {why}")
    bad = [s for s, _ in parsed if s % cfg.patch_size or s >= cfg.image_size]
    if bad:
        raise ValueError(f"--resize-schedule: sizes must be multiples of the patch size {cfg.patch_size} and below "
                         f"the image size {cfg.image_size}, got {', '.join(map(str, bad))}")
    return [(s, until, replace(cfg, image_size=s)) for s, until in parsed]


def model_at(schedule_stages, progress):
    """The model's config at `progress` in [0, 1] (a smaller image size), or None for the full size."""
    stage = stage_at(schedule_stages, progress) if schedule_stages else None
    return stage[2] if stage else None


def resize(x, model):
    """The batch x (B, C, H, W) at the image size of `model` (from model_at), or x itself for None."""
    return x if model is None else resize_batch(x, model.image_size)

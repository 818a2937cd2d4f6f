"""Changing the input resolution (paper section 3.2): resample the position embedding.

A ViT trained at one resolution can run at another with the same patch size: the patch grid
grows, so there are more tokens, and only the learned position embedding has to change. The
paper "performs 2D interpolation of the pre-trained position embeddings, according to their
location in the original image". The class token's row has no location and is kept apart.

A 2-D resample of a grid G (g, g, D) is R G R^T on every channel, with R one of the interpolation
matrices of minivit/layers/resample.py ("bilinear", as the paper's code; "bicubic", as PyTorch).
"""
from dataclasses import replace

import numpy as np

from ..backend import get_array_module
from ..config import ConfigError
from ..layers.resample import bicubic_matrix, bilinear_matrix  # noqa: F401 (the interpolation matrices)

_METHODS = {"bilinear": bilinear_matrix, "bicubic": bicubic_matrix}


def resample_grid(grid, size, method="bilinear"):
    """grid (g, g, D) -> (size, size, D), separably: R G R^T on every channel."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    xp = get_array_module(grid)
    R = xp.asarray(_METHODS[method](size, grid.shape[0]), dtype=grid.dtype)  # (size, g)
    return xp.einsum("ij,jkd,lk->ild", R, grid, R)                          # (size, size, D)


def resize_images(images, size, chunk=1000):
    """uint8 images (N, C, H, W) -> (N, C, size, size) uint8, bicubic (as torch's interpolate with
    align_corners=False), by the same interpolation matrices: R_h X R_w^T on every channel."""
    N, C, H, W = images.shape
    Rh, Rw = bicubic_matrix(size, H).astype(np.float32), bicubic_matrix(size, W).astype(np.float32)
    out = np.empty((N, C, size, size), dtype=np.uint8)
    for a in range(0, N, chunk):  # in chunks: the float copy of a whole dataset would be large
        x = images[a:a + chunk].astype(np.float32)
        y = np.einsum("ih,nchw,jw->ncij", Rh, x, Rw, optimize=True)
        out[a:a + chunk] = np.clip(np.rint(y), 0, 255)  # the cubic kernel overshoots a little at edges
    return out


def resize_pos_embed(params, cfg, image_size, method="bilinear"):
    """-> (params, cfg) for images of `image_size`, the patch size unchanged.

    The class token's row of each learned table is kept; the (g, g) grid of patch rows is
    resampled to the new grid. With pos_embed='sincos' or 'none' there is nothing learned to
    resample (the fixed table is recomputed for the new grid), so only the config changes; the
    'learned2d' and 'relative' tables are not resampled (an error says so).
    """
    try:
        new_cfg = replace(cfg, image_size=int(image_size))
    except ConfigError as e:
        raise ConfigError(f"cannot run this model on {image_size}x{image_size} images: {e}") from None
    if new_cfg == cfg or cfg.pos_embed in ("sincos", "none"):   # nothing learned to resample
        return dict(params), new_cfg
    if cfg.pos_embed != "learned":
        raise ConfigError(f"resize_pos_embed: pos_embed={cfg.pos_embed!r} is not resampled (only 'learned' "
                          "tables are; 'sincos' and 'none' need nothing)")
    g, D = cfg.grid, cfg.dim
    out = dict(params)
    for name in params:  # "pos_embed", or "blocks.i.pos_embed" with pos_embed_every_layer
        if name.rsplit(".", 1)[-1] != "pos_embed":
            continue
        pe = params[name]                                        # (1, 1 + g*g, D)
        grid = pe[0, 1:].reshape(g, g, D)                        # rows numbered row by row
        new = resample_grid(grid, new_cfg.grid, method).reshape(1, new_cfg.num_patches, D)
        out[name] = get_array_module(pe).concatenate([pe[:, :1], new], axis=1)  # (1, 1 + g'*g', D)
    return out, new_cfg


def adapt_to_images(params, cfg, image_shape, log=print):
    """Params and config that accept images of (C, H, W): the same ones when they already fit,
    position embeddings resized (bilinear) for square images of another size."""
    C, H, W = image_shape
    if (C, H, W) == (cfg.in_channels, cfg.image_size, cfg.image_size):
        return params, cfg
    if C != cfg.in_channels or H != W:
        raise ValueError(f"the images are {C}x{H}x{W} (C x H x W); the model takes {cfg.in_channels}-channel "
                         "square images")
    params, new_cfg = resize_pos_embed(params, cfg, H)
    log(f"the model was trained on {cfg.image_size}x{cfg.image_size} images: position embeddings "
        f"resized (bilinear) to {H}x{H}, {new_cfg.num_patches} patches")
    return params, new_cfg


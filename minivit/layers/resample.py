"""Interpolation as matrices, for the position embedding and for images (paper section 3.2).

Interpolation in 1-D is linear in the samples, so it is a matrix R (n_out, n_in); a separable 2-D
resample of a grid G (g, g, D) is R G R^T on every channel, and its backward is the transpose,
R^T dY R. minivit/models/resolution.py uses these to move a trained model to another resolution;
progressive resizing (posembed.pos_forward, resize_batch) uses them inside every training step.

- "bilinear": linear interpolation with the corners aligned, sample i of the output taken at
  x = i (n_in - 1) / (n_out - 1) of the input: what the paper's code does with
  `scipy.ndimage.zoom(grid, zoom, order=1)`.
- "bicubic": Keys' cubic convolution with a = -0.75 and pixel centres aligned, x = (i + 0.5)
  n_in / n_out - 0.5, reads past the border clamped to it: as
  `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`.
"""
import numpy as np

from ..backend import get_array_module

_A = -0.75  # the cubic kernel's free parameter, as PyTorch uses


def bilinear_matrix(n_out, n_in, align_corners=True):
    """(n_out, n_in) matrix of linear interpolation with aligned corners; with align_corners=False, with
    aligned pixel centres instead, x = (i + 0.5) n_in / n_out - 0.5 clamped to the border, as
    torch's interpolate(mode="bilinear", align_corners=False) and resize_batch's bicubic place them."""
    R = np.zeros((n_out, n_in))
    if n_in == 1 or (n_out == 1 and align_corners):  # one input sample, or one output at the first corner: copy it
        R[:, 0] = 1.0
        return R
    if align_corners:
        x = np.arange(n_out) * (n_in - 1) / (n_out - 1)  # where each output sample lies on the input
    else:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.minimum(np.floor(x).astype(int), n_in - 2)
    t = x - lo                                        # in [0, 1]
    rows = np.arange(n_out)
    R[rows, lo] += 1.0 - t
    R[rows, lo + 1] += t
    return R


def _cubic(d):
    """Keys' cubic convolution kernel at distance d >= 0 (a = -0.75)."""
    d = np.abs(d)
    near = ((_A + 2) * d - (_A + 3)) * d * d + 1                  # |d| <= 1
    far = ((_A * d - 5 * _A) * d + 8 * _A) * d - 4 * _A            # 1 < |d| < 2
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def bicubic_matrix(n_out, n_in):
    """(n_out, n_in) matrix of bicubic interpolation with aligned pixel centres, clamped borders."""
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(x).astype(int)
    R = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for k in (-1, 0, 1, 2):                                        # the four input samples around x
        idx = np.clip(base + k, 0, n_in - 1)
        # Near a border several taps clamp to the same sample: add them all (np.add.at, not +=).
        np.add.at(R, (rows, idx), _cubic(x - (base + k)))
    return R


def resample_table_forward(table, g):
    """A learned position table (1, G*G + 1, D) at its grid G -> (1, g*g + 1, D) at grid g, and the
    cache for backward. The class token's row has no place and is kept; the G x G patch rows are
    resampled bilinearly: on every channel, P_small = R P R^T with R = bilinear_matrix(g, G)."""
    xp = get_array_module(table)
    G, D = int(round((table.shape[1] - 1) ** 0.5)), table.shape[2]
    R = xp.asarray(bilinear_matrix(g, G), dtype=table.dtype)                        # (g, G)
    grid = table[0, 1:].reshape(G, G, D)                                            # (G, G, D)
    small = xp.einsum("ij,jkd,lk->ild", R, grid, R)                                 # (g, g, D)
    return xp.concatenate([table[:, :1], small.reshape(1, g * g, D)], axis=1), (R, G)


def resample_table_backward(dsmall, cache):
    """d of the resampled table (1, g*g + 1, D) -> d of the table (1, G*G + 1, D): the map is linear,
    so its backward is its transpose, dP = R^T dP_small R on every channel."""
    R, G = cache
    xp = get_array_module(dsmall)
    g, D = R.shape[0], dsmall.shape[2]
    dgrid = xp.einsum("ij,ild,lk->jkd", R, dsmall[0, 1:].reshape(g, g, D), R)      # (G, G, D)
    return xp.concatenate([dsmall[:, :1], dgrid.reshape(1, G * G, D)], axis=1)


def resize_batch(x, size):
    """Float images x (B, C, H, W) -> (B, C, size, size), bicubic as torch's interpolate (align_corners=False),
    on x's backend: X_small = R_h X R_w^T on every channel. No gradient flows to the images."""
    xp = get_array_module(x)
    Rh = xp.asarray(bicubic_matrix(size, x.shape[2]), dtype=x.dtype)               # (size, H)
    Rw = xp.asarray(bicubic_matrix(size, x.shape[3]), dtype=x.dtype)               # (size, W)
    # einsum("ih,bchw,jw->bcij", Rh, x, Rw) is the textbook line; as two matrix products it runs in BLAS
    # (the three-operand einsum loops in C without it: 0.3 s for 256 CIFAR images, more than the step it feeds)
    return (Rh @ x) @ Rw.T                                                           # (B, C, size, size)

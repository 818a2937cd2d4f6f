"""GELU (exact and tanh forms), inverted dropout and stochastic depth (drop path).
Derivations: docs/derivations/gelu.md, docs/derivations/drop_path.md."""
import math

import numpy as np

from ..backend import erf, fused, get_array_module
from ..contract import GELU_TANH_C, SQRT_2_OVER_PI


def gelu_forward(x, approximate="exact", keep_cache=True, out=None, bias=None):
    """GELU (Hendrycks & Gimpel, 2016) of x + bias, and its derivative there, as torch
    F.gelu(approximate='none'|'tanh'):

        exact:  y = h Phi(h) = h/2 (1 + erf(h / sqrt 2)),      y' = Phi(h) + h phi(h)
        tanh:   y = h/2 (1 + tanh u), u = sqrt(2/pi) (h + 0.044715 h^3),
                y' = (1 + tanh u)/2 + h/2 (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 h^2)

    h = x + bias (bias (features,) or None: the bias of the dense layer before, added here so that a
    kernel can do it in the same pass, minivit/models/block.py), phi the standard normal density.

    The cache is the derivative GELU'(h) (for an elementwise function backward is just dy * f'(h)):
    one array instead of h and Phi(h). keep_cache=False (inference): the cache is None. out: an array
    the kernels may write y into (x itself, when the caller has no further use for x); these lines make
    a new array. -> (y, y' or None)"""
    if approximate not in ("exact", "tanh"):
        raise ValueError(f"gelu approximate must be 'exact' or 'tanh', got {approximate!r}")
    kernel = fused(x, "gelu_forward")
    if kernel:  # one pass: numba on a CPU (minivit/cpu/kernels.py), CUDA on a GPU (minivit/gpu/kernels.py)
        return kernel(x, approximate, keep_cache, out, bias)
    xp = get_array_module(x)
    h = x if bias is None else x + bias                                        # (..., M)
    if approximate == "exact":
        cdf = 0.5 * (1.0 + erf(h / math.sqrt(2.0)))                            # Phi(h)
        y = h * cdf
        dydh = cdf + h * xp.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)    # Phi(h) + h phi(h)
    else:
        t = xp.tanh(SQRT_2_OVER_PI * (h + GELU_TANH_C * h ** 3))               # tanh u
        y = 0.5 * h * (1.0 + t)
        dydh = 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * h * h)
    return y.astype(x.dtype, copy=False), (dydh.astype(x.dtype, copy=False) if keep_cache else None)


def gelu_backward(dy, dydx):
    """dy -> dx = dy * GELU'(x); the derivative was cached by gelu_forward (either form)."""
    return dy * dydx


def dropout_forward(x, p, rng=None, train=True):
    """Inverted dropout: keep each element with probability 1 - p and scale by 1/(1 - p).

    At test time (train=False) or with p == 0 it is the identity, so nothing needs
    rescaling at inference. Masks come from the explicit `rng` (a numpy or cupy
    Generator), never from global state, so a run is reproducible from its seed.
    """
    if not train or p == 0.0:
        return x, None
    if rng is None:
        raise ValueError("dropout in training mode needs an explicit rng (e.g. numpy.random.default_rng(seed))")
    xp = get_array_module(x)
    keep = xp.asarray(rng.random(x.shape, dtype=x.dtype)) >= p
    mask = keep.astype(x.dtype) / (1.0 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask


def drop_path_forward(x, p, rng=None, train=True):
    """Stochastic depth (Huang et al., 2016), as timm's DropPath: x (B, ...) is a residual branch's
    output; each image's whole branch is dropped with probability p, kept ones scaled by 1/(1 - p).

    The block then computes x + branch, so a dropped branch leaves that image's tokens as they
    came in: the image goes through a shallower network this step. Identity at test time.
    """
    if not train or p == 0.0:
        return x, None
    if rng is None:
        raise ValueError("drop_path in training mode needs an explicit rng (e.g. numpy.random.default_rng(seed))")
    xp = get_array_module(x)
    keep = rng.random(x.shape[0]) >= p                               # (B,) drawn on the host
    mask = xp.asarray(keep.reshape((-1,) + (1,) * (x.ndim - 1)) / (1.0 - p), dtype=x.dtype)  # (B, 1, 1)
    return x * mask, mask


def patch_dropout_forward(z, p, rng=None, train=True):
    """PatchDropout (Liu et al., WACV 2023): z (B, N+1, D), token 0 the class token -> (B, K+1, D), each
    image keeping the class token and a random K = round((1 - p) N) of its N patch tokens, in order.

    Placed after the position embedding, the kept tokens carry their positions with them, and the
    encoder's cost falls with the token count (attention's with its square). Identity at test time or
    at p = 0. Drawn from the explicit `rng` (numpy or cupy Generator), one subset per image."""
    if not train or p == 0.0:
        return z, None
    if rng is None:
        raise ValueError("patch dropout in training mode needs an explicit rng (e.g. numpy.random.default_rng(seed))")
    xp = get_array_module(z)
    B, T, _ = z.shape
    N = T - 1
    K = max(1, int(round((1.0 - p) * N)))
    keep = xp.asarray(np.sort(np.argsort(rng.random((B, N)), axis=1)[:, :K], axis=1))   # (B, K) patch indices
    rows = xp.arange(B)[:, None]
    return xp.concatenate([z[:, :1], z[rows, 1 + keep]], axis=1), (keep, T)               # (B, K+1, D)


def patch_dropout_backward(dy, cache):
    """dy (B, K+1, D) -> dz (B, N+1, D): each kept token's gradient goes back to its place, the dropped
    tokens get none. The kept indices of an image are distinct, so a plain assignment scatters them."""
    if cache is None:
        return dy
    keep, T = cache
    xp = get_array_module(dy)
    B, _, D = dy.shape
    dz = xp.zeros((B, T, D), dtype=dy.dtype)
    dz[:, 0] = dy[:, 0]
    dz[xp.arange(B)[:, None], 1 + keep] = dy[:, 1:]
    return dz


# Backward multiplies by the forward's mask, as dropout's does: a dropped image's branch gets no
# gradient, a kept one dy / (1 - p) (the (B, 1, 1) mask broadcasts over its tokens).
drop_path_backward = dropout_backward

"""Layer normalisation over the last axis. Derivation: docs/derivations/layernorm.md."""
from typing import NamedTuple

from ..backend import fused, get_array_module
from .rowsums import dot_last, mean_last, sum_rows  # row means and sums as matrix-vector products: minivit/layers/rowsums.py


def layernorm_reference(x, w, b, eps=1e-6):
    """The textbook LayerNorm (Ba et al., 2016) over the last axis, as torch F.layer_norm:
    y = (x - mean) / sqrt(var + eps) * w + b, the variance biased. layernorm_forward computes the
    same with the row means as matrix-vector products (minivit/layers/rowsums.py)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / get_array_module(x).sqrt(var + eps) * w + b


def layernorm_backward_reference(dy, x, w, eps=1e-6):
    """The textbook LayerNorm backward (docs/derivations/layernorm.md), g = dy * w:
        dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps),  dw = sum(dy * xhat),  db = sum(dy),
    the sums over every row. layernorm_backward takes mean(g * xhat) as (dy * xhat) @ w / D, reusing
    the product dw needs. -> (dx, dw, db)"""
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / get_array_module(x).sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat, g = (x - mean) * rstd, dy * w
    dx = (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)) * rstd
    rows = (-1, x.shape[-1])
    return dx, (dy * xhat).reshape(rows).sum(axis=0), dy.reshape(rows).sum(axis=0)


class LayerNormCache(NamedTuple):
    """What layernorm_backward needs (the fused kernels return the same three arrays)."""
    xhat: object    # (..., D) the normalised input, (x - mean) * rstd
    rstd: object    # (..., 1) 1 / sqrt(var + eps)
    w: object       # (D,) the gain


def layernorm_forward(x, w, b, eps=1e-6, keep_cache=True):
    """x (..., D), w (D,), b (D,) -> y (..., D); y = (x - mean) / sqrt(var + eps) * w + b.

    keep_cache=False (inference): the cache is None, and y is written over xhat."""
    kernel = fused(x, "layernorm_forward")
    if kernel:  # these lines as one kernel: CUDA on a GPU (minivit/gpu/kernels.py), numba on a CPU (minivit/cpu/kernels.py)
        y, cache = kernel(x, w, b, eps)
        return y, (LayerNormCache(*cache) if keep_cache else None)
    xp = get_array_module(x)
    mean = mean_last(x)                         # (..., 1)
    xhat = x - mean                             # (..., D), centred
    var = mean_last(xhat * xhat)                # (..., 1), biased as in torch F.layer_norm
    rstd = 1.0 / xp.sqrt(var + eps)             # (..., 1)
    xhat *= rstd                                # (..., D), normalised in place
    if not keep_cache:                          # nothing to keep: y in place of xhat
        xhat *= w
        xhat += b
        return xhat, None
    y = xhat * w
    y += b
    # Backward needs xhat and rstd. Caching xhat (not x and mean, from which it could be
    # recomputed) costs the same memory, since x itself is no longer needed, and saves two passes.
    return y, LayerNormCache(xhat, rstd, w)


def layernorm_backward(dy, cache):
    """dy (..., D) -> dx (..., D), dw (D,), db (D,)."""
    kernel = fused(dy, "layernorm_backward")
    if kernel:
        return kernel(dy, cache)
    xhat, rstd, w = cache
    D = xhat.shape[-1]
    dy_xhat = dy * xhat                          # (..., D)
    dw = sum_rows(dy_xhat)                       # (D,), summed over every token
    db = sum_rows(dy)                            # (D,)
    dxhat = dy * w                               # (..., D)
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), computed in place in dxhat
    m1 = mean_last(dxhat)                        # (..., 1)
    # mean(dxhat * xhat) = mean(dy * w * xhat) = (dy * xhat) @ w / D: a matrix-vector product with
    # the dy * xhat that dw needed, so no third (..., D) product.
    m2 = dot_last(dy_xhat, w / D)                # (..., 1)
    dx = dxhat
    dx -= m1
    dx -= xhat * m2
    dx *= rstd
    return dx, dw, db

"""Layer normalisation over the last axis. Derivation: docs/derivations/layernorm.md."""
from typing import NamedTuple

from ..backend import fused, get_array_module


class LayerNormCache(NamedTuple):
    """What layernorm_backward needs (the kernels return the same three arrays)."""
    xhat: object    # (..., D) the normalised input, (x - mean) * rstd
    rstd: object    # (..., 1) 1 / sqrt(var + eps)
    w: object       # (D,) the gain


def layernorm_forward(x, w, b, eps=1e-6, keep_cache=True):
    """x (..., D), w (D,), b (D,) -> y (..., D); y = (x - mean) / sqrt(var + eps) * w + b (Ba et al., 2016),
    the variance biased, as torch F.layer_norm. keep_cache=False (inference): the cache is None."""
    kernel = fused(x, "layernorm_forward")
    if kernel:  # these lines as one kernel: numba on a CPU (minivit/cpu/kernels.py), CUDA on a GPU (minivit/gpu/kernels.py)
        y, cache = kernel(x, w, b, eps)
        return y, (LayerNormCache(*cache) if keep_cache else None)
    xp = get_array_module(x)
    mean = x.mean(axis=-1, keepdims=True)                   # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)    # (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)                         # (..., 1)
    xhat = (x - mean) * rstd                                # (..., D)
    y = xhat * w + b                                        # (..., D)
    # Backward needs xhat and rstd. Caching xhat (not x and mean, from which it could be
    # recomputed) costs the same memory, since x itself is no longer needed, and saves two passes.
    return y, (LayerNormCache(xhat, rstd, w) if keep_cache else None)


def layernorm_backward(dy, cache):
    """dy (..., D) -> dx (..., D), dw (D,), db (D,), with g = dy * w (docs/derivations/layernorm.md):

        dx = (g - mean(g) - xhat * mean(g * xhat)) * rstd,  dw = sum(dy * xhat),  db = sum(dy),

    the means over a row's D features, the sums over every row."""
    kernel = fused(dy, "layernorm_backward")
    if kernel:
        return kernel(dy, cache)
    xhat, rstd, w = cache
    D = xhat.shape[-1]
    g = dy * w                                                                       # (..., D)
    dx = (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)) * rstd  # (..., D)
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)                                      # (D,), over every token
    db = dy.reshape(-1, D).sum(axis=0)                                               # (D,)
    return dx, dw, db

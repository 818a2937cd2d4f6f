"""Layer normalisation over the last axis. Derivation: docs/derivations/layernorm.md."""
from .backend import get_array_module


def layernorm_forward(x, w, b, eps=1e-6):
    """x (..., D), w (D,), b (D,) -> y (..., D); y = (x - mean) / sqrt(var + eps) * w + b."""
    xp = get_array_module(x)
    mean = x.mean(axis=-1, keepdims=True)        # (..., 1)
    xc = x - mean                                # (..., D)
    var = (xc * xc).mean(axis=-1, keepdims=True)  # (..., 1), biased as in torch F.layer_norm
    rstd = 1.0 / xp.sqrt(var + eps)              # (..., 1)
    xhat = xc * rstd                             # (..., D)
    # Cache the minimum: x, mean and rstd; xhat is cheap to recompute.
    return xhat * w + b, (x, mean, rstd, w)


def layernorm_backward(dy, cache):
    """dy (..., D) -> dx (..., D), dw (D,), db (D,)."""
    x, mean, rstd, w = cache
    D = x.shape[-1]
    xhat = (x - mean) * rstd                     # (..., D)
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)  # (D,)
    db = dy.reshape(-1, D).sum(axis=0)           # (D,)
    dxhat = dy * w                               # (..., D)
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db

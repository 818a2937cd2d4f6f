# A solution to the exercise in 03_backward_passes.ipynb (its cell has numpy as np).
def my_layernorm_backward(dy, x, w, eps):
    """dy, x (..., D), w (D,) -> dx (..., D), dw (D,), db (D,)."""
    D = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd                          # the forward's normalised input
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)       # w and b act on every position: sum over them
    db = dy.reshape(-1, D).sum(axis=0)
    g = dy * w                                        # dL/dxhat
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db

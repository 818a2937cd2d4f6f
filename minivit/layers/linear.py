"""Dense layer y = x W + b. Derivation: docs/derivations/linear.md."""
from ..backend import fused


def linear_forward(x, w, b):
    """x (..., Din), w (Din, Dout), b (Dout,) -> y (..., Dout).

    b None: y = x W, for a caller that adds the bias in its next pass (the MLP's GELU,
    minivit/models/block.py); backward still returns the bias's gradient."""
    kernel = fused(x, "linear_forward")
    if kernel:  # the same lines, the products by MKL on a CPU where installed, by cuBLAS on a GPU
        return kernel(x, w, b)
    lead = x.shape[:-1]
    # One 2D matrix product over all leading dimensions: BLAS is fastest on one large GEMM.
    y = x.reshape(-1, x.shape[-1]) @ w  # (M, Dout), M = prod(lead)
    if b is not None:
        y = y + b
    return y.reshape(*lead, w.shape[1]), (x, w)


def linear_backward(dy, cache):
    """dy (..., Dout) -> dx (..., Din), dw (Din, Dout), db (Dout,)."""
    kernel = fused(dy, "linear_backward")
    if kernel:
        return kernel(dy, cache)
    x, w = cache
    x2 = x.reshape(-1, x.shape[-1])     # (M, Din)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (M, Dout)
    dx = (dy2 @ w.T).reshape(x.shape)   # (..., Din)
    dw = x2.T @ dy2                     # (Din, Dout)
    db = dy2.sum(axis=0)                # (Dout,)
    return dx, dw, db

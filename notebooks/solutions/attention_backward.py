# A solution to the exercise in 03_backward_passes.ipynb (its cell has numpy as np).
def my_attention_backward(dout, q, k, v):
    """out = softmax(q k^T / sqrt(d)) v; dout (B, H, N, d) -> dq, dk, dv (B, H, N, d)."""
    scale = 1 / np.sqrt(q.shape[-1])
    s = q @ k.swapaxes(-1, -2) * scale                # the forward again: scores (B, H, N, N)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)             # attention weights
    dv = p.swapaxes(-1, -2) @ dout                    # out = p v
    dp = dout @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))   # the softmax backward
    dq = ds @ k * scale                               # s = q k^T * scale
    dk = ds.swapaxes(-1, -2) @ q * scale
    return dq, dk, dv

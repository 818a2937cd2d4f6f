# A solution to the exercise in 03_backward_passes.ipynb (its cell has numpy as np).
def my_softmax_backward(dp, p):
    """p = softmax(s) over the last axis, dp = dL/dp -> dL/ds = p * (dp - sum(dp * p))."""
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))

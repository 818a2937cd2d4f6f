"""Sums, means and dot products over the last axis, and sums over rows, written as matrix-vector products.

`x.sum(axis=-1)` over a short last axis (64 to 1024 features, 65 to 197 keys) makes NumPy
reduce every row on its own, a few numbers at a time. The same sum is a product with a
column of ones, `x.reshape(-1, n) @ ones`, which BLAS runs over all rows at once (measured in
docs/results.md, "What made the difference"). LayerNorm and softmax use these.

The sums over rows that backward takes for a bias or a LayerNorm gain, `dy.sum(axis=0)` over
(tokens, features), are the product of a row of ones with the matrix, `ones @ dy2`, for the same
reason.
"""
from ..backend import get_array_module


def dot_last(x, v):
    """x (..., n), v (n,) -> (..., 1): (x * v).sum(axis=-1, keepdims=True), each row's dot product with v."""
    n = x.shape[-1]
    return (x.reshape(-1, n) @ v.reshape(n, 1)).reshape(*x.shape[:-1], 1)


def sum_last(x, scale=1.0):
    """x (..., n) -> (..., 1): scale * x.sum(axis=-1, keepdims=True)."""
    return dot_last(x, get_array_module(x).full(x.shape[-1], scale, dtype=x.dtype))


def mean_last(x):
    """x (..., n) -> (..., 1): x.mean(axis=-1, keepdims=True)."""
    return sum_last(x, 1.0 / x.shape[-1])


def sum_rows(x):
    """x (..., n) -> (n,): x summed over every axis but the last, x.reshape(-1, n).sum(axis=0)."""
    x2 = x.reshape(-1, x.shape[-1])                                # (M, n)
    return get_array_module(x).ones(x2.shape[0], dtype=x.dtype) @ x2  # (n,)

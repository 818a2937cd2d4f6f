"""Centred finite differences and relative error: how every backward in minivit is checked.

    dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h       error O(h^2) + O(eps / h)

In float64 with h = 1e-6 a right gradient agrees to a relative error around 1e-9 or
better; a wrong one typically shows 1e-2 or worse (CS231n's gradient_check.py).
"""
import numpy as np


def rel_error(a, b):
    """||a - b|| / (||a|| + ||b||) over all entries: 0 for equal arrays, 1 for unrelated ones."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"rel_error: {a.size} entries against {b.size}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def numerical_grad(f, x, h=1e-6, max_entries=None, rng=None):
    """Centred differences of scalar f() w.r.t. array x, which f reads (x is modified in place
    and restored). With max_entries, only that many random entries are probed.
    Returns (flat indices probed, gradient at those indices)."""
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be a contiguous array that f() reads, so it can be perturbed in place")
    idx = np.arange(flat.size)
    if max_entries is not None and flat.size > max_entries:
        idx = (rng or np.random.default_rng(0)).choice(flat.size, max_entries, replace=False)
    g = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        g[j] = (fp - fm) / (2 * h)
    return idx, g


def check_grads(f, arrays, analytic, max_entries=None, tol=1e-7):
    """Relative error of each analytic gradient against finite differences of scalar f().

    arrays: name -> float64 array that f() reads; analytic: name -> dL/d(array).
    Raises AssertionError naming every array whose error is not below tol; returns the errors."""
    errors = {}
    for name, x in arrays.items():
        if x.dtype != np.float64:
            raise ValueError(f"{name}: gradient checks need float64 (got {x.dtype}); float32 rounding swamps the differences")
        idx, num = numerical_grad(f, x, max_entries=max_entries)
        errors[name] = rel_error(np.asarray(analytic[name]).reshape(-1)[idx], num)
    bad = {k: v for k, v in errors.items() if not v < tol}
    if bad:
        raise AssertionError(f"relative error above {tol}: {bad}")
    return errors

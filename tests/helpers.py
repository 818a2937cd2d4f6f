"""Shared test tools: centred finite differences and relative error."""
import numpy as np


def rel_error(a, b):
    """||a - b|| / (||a|| + ||b||): 0 for equal arrays, 1 for unrelated ones."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def numerical_grad(f, x, h=1e-6, max_entries=None, rng=None):
    """Centred differences (f(x + h) - f(x - h)) / 2h of scalar f w.r.t. array x (modified in place
    and restored). With max_entries, only that many random entries are probed; returns (idx, grad)."""
    flat = x.reshape(-1)
    n = flat.size
    idx = np.arange(n)
    if max_entries is not None and n > max_entries:
        idx = (rng or np.random.default_rng(0)).choice(n, max_entries, replace=False)
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
    """Assert every analytic gradient matches finite differences of scalar f() to relative error < tol.

    arrays: name -> float64 array that f() reads; analytic: name -> gradient of f w.r.t. it."""
    errors = {}
    for name, x in arrays.items():
        assert x.dtype == np.float64, f"{name}: gradient checks run in float64"
        idx, num = numerical_grad(f, x, max_entries=max_entries)
        ana = np.asarray(analytic[name]).reshape(-1)[idx]
        errors[name] = rel_error(ana, num)
        assert np.linalg.norm(num) > 0 or np.linalg.norm(ana) == 0, name
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"relative error above {tol}: {bad}"
    return errors

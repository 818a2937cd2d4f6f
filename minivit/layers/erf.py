"""erfc and the normal CDF by Abramowitz & Stegun's rational approximation 7.1.26, for the
float32 NumPy GELU (minivit/layers/activations.py): SciPy's erf works in float64, too slow there."""
import math
from functools import lru_cache

import numpy as np

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)

# Abramowitz & Stegun, Handbook of Mathematical Functions (1964), eq. 7.1.26: for u >= 0,
# erf(u) = 1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-u^2), t = 1 / (1 + p u),
# with absolute error at most 1.5e-7: one to two float32 rounding steps near 1 (spacing 6e-8 to 1.2e-7).
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@lru_cache(maxsize=None)
def _as_monic(scale):
    """lambda and (c1, c2, c3, c4) with scale * (a1 t + ... + a5 t^5) = tau^5 + c4 tau^4 + ... + c1 tau, tau = t / lambda."""
    lam = (scale * _AS_A[4]) ** -0.2                        # scale a5 lambda^5 = 1: the leading coefficient is 1
    return lam, tuple(scale * a * lam ** i for i, a in enumerate(_AS_A[:4], start=1))


def erfc_as(v, kappa, e, scale=1.0):
    """scale * erfc(u) by A&S 7.1.26, for u = kappa * v >= 0, given v (not changed) and e = exp(-u^2).

    The textbook form: erfc(u) = (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-u^2), t = 1 / (1 + p u).
    Written here with the polynomial led by 1, which saves two passes: with tau = t / lambda and
    lambda = (scale a5)^(-1/5),
        scale * (a1 t + ... + a5 t^5) = tau^5 + c4 tau^4 + c3 tau^3 + c2 tau^2 + c1 tau,  c_i = scale a_i lambda^i,
    so Horner's rule starts from tau + c4 with no multiplication, and
        tau = 1 / (lambda (1 + p kappa v)) = [1 / (lambda p kappa)] / (v + 1 / (p kappa))
    is one addition and one division, the constants in the scalars (so v needs no scaling pass).
    tests/test_speed_forms.py checks this against the textbook order in float64 to 1e-12.
    """
    lam, c = _as_monic(scale)
    tau = v + 1.0 / (_AS_P * kappa)
    np.divide(1.0 / (lam * _AS_P * kappa), tau, out=tau)   # a divide, not np.reciprocal: docs/results.md
    q = tau + c[3]                          # Horner: (((tau + c4) tau + c3) tau + c2) tau + c1, times tau
    for ci in (c[2], c[1], c[0]):
        q *= tau
        q += ci
    q *= tau
    q *= e
    return q


def normal_cdf_as(x, e):
    """Phi(x), the standard normal CDF, by A&S 7.1.26, given e = exp(-x^2 / 2).

    Phi(x) = (1 + erf(x / sqrt 2)) / 2. With u = |x| / sqrt 2, exp(-u^2) is e, so
    erf(u) = 1 - 2q with q = erfc(u) / 2, and because erf is odd,
    Phi(x) = 1/2 + sign(x) (1/2 - q). (A select, np.where(x >= 0, 1 - q, q), reads the
    same but NumPy runs it slower than the two arithmetic passes: docs/results.md, "What made
    the difference".) Its error against SciPy's erf is pinned by tests/test_speed_forms.py.
    NumPy only: this is the float32 path of gelu_forward, where SciPy's erf works in float64.
    """
    q = erfc_as(np.abs(x), _INV_SQRT_2, e, 0.5)   # (1 - erf(u)) / 2, u = |x| / sqrt 2
    np.subtract(0.5, q, out=q)              # erf(u) / 2
    q *= np.sign(x)                         # erf(x / sqrt 2) / 2
    q += 0.5
    return q

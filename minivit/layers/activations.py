"""GELU (exact and tanh forms), inverted dropout and stochastic depth (drop path).
Derivations: docs/derivations/gelu.md, docs/derivations/drop_path.md."""
import math
from functools import lru_cache, partial

import numpy as np

from ..backend import erf, fused, get_array_module
from .pieces import in_pieces

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715  # the cubic coefficient of Hendrycks & Gimpel's tanh approximation


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
    np.divide(1.0 / (lam * _AS_P * kappa), tau, out=tau)   # (np.reciprocal runs ~1.7x slower than a divide)
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
    same but NumPy runs it several times slower than the two arithmetic passes.)
    Its error against SciPy's erf is pinned by tests/test_speed_forms.py. NumPy only:
    this is the float32 path of gelu_forward, where SciPy's erf (which works in float64)
    cost a tenth of a training step.
    """
    q = erfc_as(np.abs(x), _INV_SQRT_2, e, 0.5)   # (1 - erf(u)) / 2, u = |x| / sqrt 2
    np.subtract(0.5, q, out=q)              # erf(u) / 2
    q *= np.sign(x)                         # erf(x / sqrt 2) / 2
    q += 0.5
    return q


def gelu_forward(x, approximate="exact", keep_cache=True, out=None):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF; as torch F.gelu(approximate='none'|'tanh').

    out: the array y is written into, which may be x itself when the caller has no further use
    for x (the MLP's hidden layer: minivit/models/block.py); None, a new array. (On a GPU the kernel
    writes a new array.)

    The cache holds the derivative GELU'(x), computed here from pieces forward has at hand
    (for an elementwise function, backward is just dy * f'(x)): one array instead of x and
    Phi(x), and one pass in backward. With keep_cache=False (inference) the derivative is
    not computed and the cache is None, and the exact form is evaluated as the equal
    relu(x) - |x| Phi(-|x|), which needs no sign(x) (_gelu_exact_y). The arithmetic runs over
    cache-sized pieces of the rows (minivit/layers/pieces.py); each piece is the formula below.
    """
    if approximate not in _GELU_FORMS:
        raise ValueError(f"gelu approximate must be 'exact' or 'tanh', got {approximate!r}")
    gpu = fused(x)
    if gpu:  # on a GPU: one CUDA kernel writes y and GELU'(x) (minivit/gpu/kernels.py)
        y, dydx = gpu.gelu(x, approximate)
        return y, (dydx if keep_cache else None)
    xp = get_array_module(x)
    y = xp.empty_like(x) if out is None else out
    if not keep_cache:
        return in_pieces(partial(_GELU_FORMS[approximate], dydx=None), [x], [y])[0], None
    return in_pieces(_GELU_FORMS[approximate], [x], [y, xp.empty_like(x)])


def _gelu_exact(x, y, dydx):
    """y = x Phi(x) and dydx = GELU'(x), written into y and dydx (dydx None: y only).

    y is written last, and x is not read after it, so y may be x itself (so in each form)."""
    xp = get_array_module(x)
    if dydx is None:
        return _gelu_exact_y(x, y)
    e = x * x
    e *= -0.5
    xp.exp(e, out=e)                                       # exp(-x^2 / 2)
    if xp is np and x.dtype == np.float32:
        phi = normal_cdf_as(x, e)                          # Phi(x), hand-written (see above)
    else:
        phi = 0.5 * (1.0 + erf(x * _INV_SQRT_2))           # Phi(x), SciPy's float64 erf
    # d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the normal density.
    xp.multiply(e, x, out=dydx)
    dydx *= _INV_SQRT_2PI
    dydx += phi
    xp.multiply(x, phi, out=y)


def _gelu_exact_y(x, y):
    """y = x Phi(x) alone (inference), written as relu(x) - |x| Phi(-|x|).

    The two are equal: for x >= 0, x Phi(x) = x - x (1 - Phi(x)) = x - x Phi(-x); for x < 0,
    relu(x) = 0 and x Phi(x) = -|x| Phi(-|x|). GELU is ReLU minus a small, even correction that
    decays like exp(-x^2 / 2). Phi(-|x|) = erfc(|x| / sqrt 2) / 2 needs no sign(x), which costs
    NumPy four times a multiplication; the training form needs Phi(x) itself for the derivative.
    """
    xp = get_array_module(x)
    hn = x * -0.5                                          # -x/2
    e = hn * x
    xp.exp(e, out=e)                                       # exp(-x^2 / 2)
    h = xp.abs(hn)                                         # |x|/2
    if xp is np and x.dtype == np.float32:
        tail = erfc_as(h, math.sqrt(2.0), e)               # erfc(u) = 2 Phi(-|x|), u = |x| / sqrt 2 = sqrt(2) h
    else:
        tail = 1.0 - erf(h * math.sqrt(2.0))               # erfc(u), SciPy's float64 erf
    tail *= h                                              # |x| Phi(-|x|)
    xp.subtract(h, hn, out=y)                              # relu(x) = |x|/2 + x/2
    y -= tail


def _gelu_tanh(x, y, dydx):
    """y = x/2 (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3), and dydx = its derivative (None: y only)."""
    xp = get_array_module(x)
    u = x * x
    u *= _GELU_C
    u += 1.0
    u *= x
    u *= _SQRT_2_OVER_PI                                   # u = sqrt(2/pi) (x + 0.044715 x^3)
    t = xp.tanh(u)
    if dydx is not None:
        # d/dx [x/2 (1 + tanh u)] = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) du/dx,
        # du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        du = x * x
        du *= 3.0 * _GELU_C
        du += 1.0
        du *= _SQRT_2_OVER_PI
        xp.multiply(t, t, out=dydx)
        xp.subtract(1.0, dydx, out=dydx)
        dydx *= 0.5 * x
        dydx *= du
        dydx += 0.5 * (1.0 + t)
    t += 1.0
    t *= 0.5
    xp.multiply(x, t, out=y)                               # y = x (1 + tanh u) / 2, last: y may be x


_GELU_FORMS = {"exact": _gelu_exact, "tanh": _gelu_tanh}


def gelu_backward(dy, dydx):
    """dy -> dx = dy * GELU'(x); the derivative was cached by gelu_forward (either form)."""
    xp = get_array_module(dy)
    return in_pieces(xp.multiply, [dy, dydx], [xp.empty_like(dy)])[0]


def dropout_forward(x, p, rng=None, train=True):
    """Inverted dropout: keep each element with probability 1 - p and scale by 1/(1 - p).

    At test time (train=False) or with p == 0 it is the identity, so nothing needs
    rescaling at inference. Masks come from the explicit `rng` (a numpy or cupy
    Generator), never from global state, so a run is reproducible from its seed.
    """
    if not train or p == 0.0:
        return x, None
    if rng is None:
        raise ValueError("dropout in training mode needs an explicit rng (e.g. numpy.random.default_rng(seed))")
    xp = get_array_module(x)
    keep = xp.asarray(rng.random(x.shape, dtype=x.dtype)) >= p
    mask = keep.astype(x.dtype) / (1.0 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask


def drop_path_forward(x, p, rng=None, train=True):
    """Stochastic depth (Huang et al., 2016), as timm's DropPath: x (B, ...) is a residual branch's
    output; each image's whole branch is dropped with probability p, kept ones scaled by 1/(1 - p).

    The block then computes x + branch, so a dropped branch leaves that image's tokens as they
    came in: the image goes through a shallower network this step. Identity at test time.
    """
    if not train or p == 0.0:
        return x, None
    if rng is None:
        raise ValueError("drop_path in training mode needs an explicit rng (e.g. numpy.random.default_rng(seed))")
    xp = get_array_module(x)
    keep = rng.random(x.shape[0]) >= p                               # (B,) drawn on the host
    mask = xp.asarray(keep.reshape((-1,) + (1,) * (x.ndim - 1)) / (1.0 - p), dtype=x.dtype)  # (B, 1, 1)
    return x * mask, mask


# Backward multiplies by the forward's mask, as dropout's does: a dropped image's branch gets no
# gradient, a kept one dy / (1 - p) (the (B, 1, 1) mask broadcasts over its tokens).
drop_path_backward = dropout_backward

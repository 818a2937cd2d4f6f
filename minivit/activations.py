"""GELU (exact and tanh forms) and inverted dropout. Derivation: docs/derivations/gelu.md."""
import math

from .backend import erf, get_array_module

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715  # the cubic coefficient of Hendrycks & Gimpel's tanh approximation


def gelu_forward(x, approximate="exact"):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF; as torch F.gelu(approximate='none'|'tanh')."""
    if approximate == "exact":
        phi = 0.5 * (1.0 + erf(x * _INV_SQRT_2))           # Phi(x)
        return x * phi, (x, phi, approximate)
    if approximate == "tanh":
        xp = get_array_module(x)
        t = xp.tanh(_SQRT_2_OVER_PI * x * (1.0 + _GELU_C * x * x))  # tanh(u); x*x, not x**3 (float pow is slow)
        return 0.5 * x * (1.0 + t), (x, t, approximate)
    raise ValueError(f"gelu approximate must be 'exact' or 'tanh', got {approximate!r}")


def gelu_backward(dy, cache):
    """dy -> dx, through the derivative of the form used in forward."""
    x, s, approximate = cache
    xp = get_array_module(x)
    if approximate == "exact":
        # d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density.
        return dy * (s + x * _INV_SQRT_2PI * xp.exp(-0.5 * x * x))
    # d/dx [x/2 (1 + tanh u)] = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) du/dx
    du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x * x)
    return dy * (0.5 * (1.0 + s) + 0.5 * x * (1.0 - s * s) * du)


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

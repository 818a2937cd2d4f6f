"""GELU (exact and tanh forms), inverted dropout and stochastic depth (drop path).
Derivations: docs/derivations/gelu.md, docs/derivations/drop_path.md."""
import math
from functools import partial

import numpy as np

from ..backend import erf, fused, get_array_module
from .cache_pieces import in_pieces
from .erf import erfc_as, normal_cdf_as


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715  # the cubic coefficient of Hendrycks & Gimpel's tanh approximation


def gelu_reference(x, approximate="exact"):
    """The textbook GELU (Hendrycks & Gimpel, 2016) and its derivative, written as the formulas read:

        exact:  y = x Phi(x) = x/2 (1 + erf(x / sqrt 2)),      y' = Phi(x) + x phi(x)
        tanh:   y = x/2 (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3),
                y' = (1 + tanh u)/2 + x/2 (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

    phi the standard normal density. gelu_forward computes the same in fewer passes over memory, in
    cache-sized pieces, with a hand-written erf in float32; tests/test_speed_forms.py pins the two
    together in float64. -> (y, y')"""
    xp = get_array_module(x)
    if approximate == "exact":
        phi_cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
        return x * phi_cdf, phi_cdf + x * xp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    t = xp.tanh(math.sqrt(2.0 / math.pi) * (x + _GELU_C * x ** 3))
    dt = (1.0 - t * t) * math.sqrt(2.0 / math.pi) * (1.0 + 3.0 * _GELU_C * x * x)
    return 0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * dt


def gelu_forward(x, approximate="exact", keep_cache=True, out=None, bias=None):
    """GELU(x) = x * Phi(x), Phi the standard normal CDF; as torch F.gelu(approximate='none'|'tanh').

    bias (features,): GELU(x + bias) instead, the bias of the layer before added here (with the fused
    CPU kernel, in the same pass; minivit/models/block.py). The cached derivative is then at x + bias.

    out: the array y is written into, which may be x itself when the caller has no further use
    for x (the MLP's hidden layer: minivit/models/block.py); None, a new array. (On a GPU the kernel
    writes a new array.)

    The cache holds the derivative GELU'(x), computed here from pieces forward has at hand
    (for an elementwise function, backward is just dy * f'(x)): one array instead of x and
    Phi(x), and one pass in backward. With keep_cache=False (inference) the derivative is
    not computed and the cache is None, and the exact form is evaluated as the equal
    relu(x) - |x| Phi(-|x|), which needs no sign(x) (_gelu_exact_y). The arithmetic runs over
    cache-sized pieces of the rows (minivit/layers/cache_pieces.py); each piece is the formula below.
    """
    if approximate not in _GELU_FORMS:
        raise ValueError(f"gelu approximate must be 'exact' or 'tanh', got {approximate!r}")
    xp = get_array_module(x)
    kernel = fused(x, "bias_gelu")
    if kernel:  # on a CPU with numba: one pass writes y and GELU'(x + bias) (minivit/cpu/kernels.py)
        return kernel(x, bias, approximate, keep_cache, out)
    if bias is not None:
        x = x + bias if out is None else xp.add(x, bias, out=out)   # then GELU over out, in place
    kernel = fused(x, "gelu")
    if kernel:  # on a GPU: one CUDA kernel writes y and GELU'(x) (minivit/gpu/kernels.py)
        y, dydx = kernel(x, approximate)
        return y, (dydx if keep_cache else None)
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
    decays like exp(-x^2 / 2). Phi(-|x|) = erfc(|x| / sqrt 2) / 2 needs no sign(x), which NumPy
    runs slower than a multiplication (docs/results.md); the training form needs Phi(x) itself for the derivative.
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


def patch_dropout_forward(z, p, rng=None, train=True):
    """PatchDropout (Liu et al., WACV 2023): z (B, N+1, D), token 0 the class token -> (B, K+1, D), each
    image keeping the class token and a random K = round((1 - p) N) of its N patch tokens, in order.

    Placed after the position embedding, the kept tokens carry their positions with them, and the
    encoder's cost falls with the token count (attention's with its square). Identity at test time or
    at p = 0. Drawn from the explicit `rng` (numpy or cupy Generator), one subset per image."""
    if not train or p == 0.0:
        return z, None
    if rng is None:
        raise ValueError("patch dropout in training mode needs an explicit rng (e.g. numpy.random.default_rng(seed))")
    xp = get_array_module(z)
    B, T, _ = z.shape
    N = T - 1
    K = max(1, int(round((1.0 - p) * N)))
    keep = xp.asarray(np.sort(np.argsort(rng.random((B, N)), axis=1)[:, :K], axis=1))   # (B, K) patch indices
    rows = xp.arange(B)[:, None]
    return xp.concatenate([z[:, :1], z[rows, 1 + keep]], axis=1), (keep, T)               # (B, K+1, D)


def patch_dropout_backward(dy, cache):
    """dy (B, K+1, D) -> dz (B, N+1, D): each kept token's gradient goes back to its place, the dropped
    tokens get none. The kept indices of an image are distinct, so a plain assignment scatters them."""
    if cache is None:
        return dy
    keep, T = cache
    xp = get_array_module(dy)
    B, _, D = dy.shape
    dz = xp.zeros((B, T, D), dtype=dy.dtype)
    dz[:, 0] = dy[:, 0]
    dz[xp.arange(B)[:, None], 1 + keep] = dy[:, 1:]
    return dz


# Backward multiplies by the forward's mask, as dropout's does: a dropped image's branch gets no
# gradient, a kept one dy / (1 - p) (the (B, 1, 1) mask broadcasts over its tokens).
drop_path_backward = dropout_backward

"""Graders for the notebooks' exercises: `check_<name>(fn)` tests a function a learner wrote.

Each checker calls the learner's function on small float64 inputs and compares what comes
back with minivit's own layer: first the shape, then the values (relative error below
1e-7), and for a backward pass also against centred finite differences of the forward
(minivit/tools/gradcheck.py), so the grade does not rest on minivit alone. It says precisely
what is wrong: which output, the shape found and the shape expected, or how far off the
values are and where the largest difference sits. For the mistakes learners make most
often (softmax over the wrong axis, a head split without the transpose, a missing
1/sqrt(d), a LayerNorm backward without its mean terms, L2 decay in place of decoupled
decay, ...) the wrong answer is recognised and named.

A passing function prints one line ("softmax: correct"). A wrong one raises ExerciseError with
that one message and none of the checker's own lines (which hold the answer). A function that
still raises NotImplementedError (the stub as handed out) prints "not written yet", so a notebook
runs top to bottom before its exercises are done; with the environment variable
MINIVIT_EXERCISES=strict it raises instead (the tests run the notebooks with the solutions filled
in that way). A checker returns nothing, so a notebook cell shows no stray Out: True.

The signatures the exercises ask for:

    softmax(x)                              x (..., n) -> (..., n), over the last axis
    softmax_backward(dp, p)                 p = softmax(s), dp = dL/dp -> dL/ds
    split_heads(x, heads)                   (B, N, D) -> (B, H, N, D/H)
    attention(q, k, v)                      (B, H, N, d) each -> softmax(q k^T / sqrt d) v
    attention_backward(dout, q, k, v)       -> dq, dk, dv
    layernorm_backward(dy, x, w, eps)       -> dx, dw, db  (forward: (x - mean) / sqrt(var + eps) * w + b)
    im2col(x, P)                            (B, C, H, W) -> (B, N, C*P*P): patches in raster order,
                                            each flattened as (channel, row, column)
    patch_embed(x, w, b)                    w (D, C, P, P), b (D,) -> tokens (B, N, D)
    adamw_step(p, g, m, v, t, lr, betas, eps, weight_decay) -> new p, m, v  (t counts from 1)
    maxpool_backward(dy, x)                 2x2 max pooling, stride 2: dy (B, C, H/2, W/2) -> dx (B, C, H, W)
"""
import math
import os

import numpy as np

from ..layers.attention import attention_backward, attention_forward, softmax, softmax_backward
from ..models.cnn import maxpool2x2_backward, maxpool2x2_forward
from ..layers.conv import im2col as _im2col, patch_embed_forward
from .gradcheck import numerical_grad, rel_error
from ..layers.norm import layernorm_backward, layernorm_forward
from ..train.optim import AdamW

TOL = 1e-7          # relative error a right answer reaches easily in float64
MATCH = 1e-6        # a wrong answer this close to a known mistake is that mistake


class ExerciseError(AssertionError):
    """A learner's function gave a wrong answer; the message says what and where."""


class _NotWritten(Exception):
    pass


def _rng():
    return np.random.default_rng(2021)


def _call(fn, *args):
    try:
        return fn(*args)
    except NotImplementedError:
        raise _NotWritten from None
    except ValueError as e:
        if "broadcast" not in str(e):
            raise
        raise ExerciseError(f"your function raised NumPy's broadcasting error ({e}). A sum, mean or max over "
                            "the last axis keeps that axis only with keepdims=True, shape (..., 1), and only "
                            "then divides or subtracts row by row against (..., n)") from None


def _graded(name):
    """Decorator: the pass line, and the not-written-yet case, for every checker."""
    def wrap(check):
        def checker(fn):
            try:
                check(fn)
            except _NotWritten:
                if os.environ.get("MINIVIT_EXERCISES", "") == "strict":
                    raise ExerciseError(f"{name}: the function still raises NotImplementedError") from None
                print(f"{name}: not written yet (the function raises NotImplementedError)")
                return
            except ExerciseError as e:   # raised again here: the traceback shows the learner's cell, not the key
                raise ExerciseError(str(e)) from None
            print(f"{name}: correct")
        checker.__name__ = f"check_{name}"
        checker.__doc__ = check.__doc__
        return checker
    return wrap


def _array(what, got):
    if isinstance(got, (tuple, list)):
        raise ExerciseError(f"{what}: expected one array, got a {type(got).__name__} of {len(got)} items")
    try:
        return np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise ExerciseError(f"{what}: expected an array, got {type(got).__name__}") from None


def _outputs(what, got, names):
    """Unpack a function's tuple of results, checking how many came back."""
    if not isinstance(got, (tuple, list)) or len(got) != len(names):
        n = len(got) if isinstance(got, (tuple, list)) else 1
        raise ExerciseError(f"{what}: expected {len(names)} results ({', '.join(names)}), got {n}")
    return [_array(f"{what}: {n}", g) for n, g in zip(names, got)]


def compare(what, got, want, mistakes=()):
    """Raise ExerciseError unless `got` equals `want` to TOL; name a known mistake it matches.

    mistakes: (description, the array that mistake produces) pairs."""
    got = _array(what, got)
    for hint, wrong in mistakes:
        if got.shape == wrong.shape and rel_error(got, wrong) < MATCH and (wrong.shape != want.shape or
                                                                         rel_error(wrong, want) > MATCH):
            raise ExerciseError(f"{what}: {hint}")
    if got.shape != want.shape:
        raise ExerciseError(f"{what}: shape {got.shape}, expected {want.shape}")
    if not np.isfinite(got).all():
        raise ExerciseError(f"{what}: contains {int((~np.isfinite(got)).sum())} inf or nan values")
    err = rel_error(got, want)
    if not err < TOL:
        i = np.unravel_index(np.argmax(np.abs(got - want)), got.shape)
        raise ExerciseError(f"{what}: relative error {err:.1e} (a right answer is below {TOL:.0e}); "
                            f"the largest difference is at index {tuple(int(j) for j in i)}: "
                            f"got {got[i]:.6g}, expected {want[i]:.6g}")


def grad_check(what, grad, loss, x):
    """Compare an analytic gradient with centred differences of the scalar loss() at x (float64)."""
    _, num = numerical_grad(loss, x)
    err = rel_error(_array(what, grad).reshape(-1), num)
    if not err < TOL:
        raise ExerciseError(f"{what}: disagrees with finite differences of the forward pass "
                            f"(relative error {err:.1e}, a right gradient is below {TOL:.0e})")


@_graded("softmax")
def check_softmax(fn):
    """fn(x) -> softmax of x over its last axis, x of any number of dimensions."""
    x = _rng().standard_normal((2, 3, 5)) * 3
    want = softmax(x)
    e = np.exp(x)
    compare("softmax(x)", _call(fn, x.copy()), want, [
        ("normalised over axis 0, the first one: each row (the last axis) must sum to 1", softmax(x, axis=0)),
        ("normalised over axis 1: each row (the last axis, axis=-1) must sum to 1", softmax(x, axis=1)),
        ("divided by the sum of all the entries: each row needs its own sum (axis=-1, keepdims=True)", e / e.sum()),
    ])
    big = x * 300                                         # logits up to about 3,000: exp overflows
    with np.errstate(over="ignore", invalid="ignore"):
        got = _array("softmax(300 x)", _call(fn, big.copy()))
    if not np.isfinite(got).all():
        raise ExerciseError("softmax(300 x): inf or nan for large logits; exp(800) overflows float64. "
                            "Subtract each row's maximum before exp: it cancels between numerator and denominator")
    compare("softmax(300 x)", got, softmax(big))


@_graded("softmax_backward")
def check_softmax_backward(fn):
    """fn(dp, p) -> dL/ds, where p = softmax(s) over the last axis and dp = dL/dp."""
    rng = _rng()
    s, dp = rng.standard_normal((3, 4, 6)), rng.standard_normal((3, 4, 6))
    p = softmax(s)
    got = _call(fn, dp.copy(), p.copy())
    compare("softmax_backward(dp, p)", got, softmax_backward(dp, p), [
        ("this is p * dp: the Jacobian's off-diagonal terms -p_i p_j are missing, "
         "which subtract p * sum(dp * p) over the row", p * dp),
        ("this is dp * p * (1 - p), the diagonal of the Jacobian alone (as for a sigmoid): "
         "the off-diagonal terms -p_i p_j are missing", dp * p * (1 - p)),
        ("the row sum of dp * p is taken over the wrong axis: sum over the last axis, keepdims=True",
         p * (dp - (dp * p).sum(axis=0, keepdims=True))),
    ])
    grad_check("softmax_backward", got, lambda: float((softmax(s) * dp).sum()), s)


@_graded("split_heads")
def check_split_heads(fn):
    """fn(x, heads) -> x (B, N, D) cut into heads: (B, H, N, D/H), head h owning features h*d .. (h+1)*d - 1."""
    B, N, D, H = 2, 5, 12, 3
    x = _rng().standard_normal((B, N, D))
    d = D // H
    compare(f"split_heads(x of shape {x.shape}, heads={H})", _call(fn, x.copy(), H),
            x.reshape(B, N, H, d).transpose(0, 2, 1, 3), [
                ("reshaped straight to (B, H, N, d): that cuts across tokens, so a head's rows mix "
                 "features of different tokens. Reshape to (B, N, H, d) first, then swap the N and H axes",
                 x.reshape(B, H, N, d)),
                ("split D as (d, H): head h must own the consecutive features h*d ... (h+1)*d - 1, "
                 "so reshape to (B, N, H, d), not (B, N, d, H)", x.reshape(B, N, d, H).transpose(0, 3, 1, 2)),
                ("the result is (B, N, H, d): swap axes 1 and 2 to put the heads before the tokens",
                 x.reshape(B, N, H, d)),
            ])


def _attention_inputs(rng, B=2, H=3, N=5, d=4):
    return [rng.standard_normal((B, H, N, d)) for _ in range(3)]


@_graded("attention")
def check_attention(fn):
    """fn(q, k, v) -> softmax(q k^T / sqrt(d)) v, for q, k, v of shape (B, H, N, d)."""
    q, k, v = _attention_inputs(_rng())
    d = q.shape[-1]
    s = q @ k.swapaxes(-1, -2)
    compare("attention(q, k, v)", _call(fn, q.copy(), k.copy(), v.copy()), attention_forward(q, k, v)[0], [
        ("the scores are not scaled: divide q k^T by sqrt(d) before the softmax", softmax(s) @ v),
        ("the scores are divided by d: the scale is 1 / sqrt(d)", softmax(s / d) @ v),
        ("the softmax runs over the queries (axis -2): each query's weights must sum to 1 over the keys (axis -1)",
         softmax(s / math.sqrt(d), axis=-2) @ v),
    ])


@_graded("attention_backward")
def check_attention_backward(fn):
    """fn(dout, q, k, v) -> (dq, dk, dv) for out = softmax(q k^T / sqrt(d)) v."""
    rng = _rng()
    q, k, v = _attention_inputs(rng)
    out, cache = attention_forward(q, k, v)
    dout = rng.standard_normal(out.shape)
    want = attention_backward(dout, cache)
    got = _outputs("attention_backward", _call(fn, dout.copy(), q.copy(), k.copy(), v.copy()), ["dq", "dk", "dv"])
    root_d = math.sqrt(q.shape[-1])
    p = cache.probs
    ds_no_sum = p * (dout @ v.swapaxes(-1, -2)) / root_d     # the softmax backward without its row-sum term
    for name, g, w, wrong in zip(["dq", "dk", "dv"], got, want, [
            [("missing the factor 1/sqrt(d) of the scores", want[0] * root_d),
             ("the softmax backward lacks its - p * rowsum(dp * p) term", ds_no_sum @ k)],
            [("missing the factor 1/sqrt(d) of the scores", want[1] * root_d),
             ("the softmax backward lacks its - p * rowsum(dp * p) term", ds_no_sum.swapaxes(-1, -2) @ q)],
            [("uses p where p^T is needed: dv = p^T dout", p @ dout)]]):
        compare(f"attention_backward: {name}", g, w, wrong)
    loss = lambda: float((attention_forward(q, k, v)[0] * dout).sum())
    for name, g, x in zip(["dq", "dk", "dv"], got, (q, k, v)):
        grad_check(f"attention_backward: {name}", g, loss, x)


@_graded("layernorm_backward")
def check_layernorm_backward(fn):
    """fn(dy, x, w, eps) -> (dx, dw, db) for y = (x - mean) / sqrt(var + eps) * w + b over the last axis."""
    rng = _rng()
    x = rng.standard_normal((3, 4, 8)) * 2 + 1
    w, b, eps = rng.standard_normal(8), rng.standard_normal(8), 1e-5
    y, cache = layernorm_forward(x, w, b, eps)
    dy = rng.standard_normal(y.shape)
    want = layernorm_backward(dy, cache)
    got = _outputs("layernorm_backward", _call(fn, dy.copy(), x.copy(), w.copy(), eps), ["dx", "dw", "db"])
    xhat, rstd = cache.xhat, cache.rstd
    g = dy * w
    compare("layernorm_backward: dx", got[0], want[0], [
        ("this is dy * w / sqrt(var + eps): the mean and the variance depend on x too, so the two "
         "mean terms - mean(g) - xhat * mean(g * xhat), g = dy * w, are missing", g * rstd),
        ("the term - xhat * mean(g * xhat) (through the variance) is missing",
         (g - g.mean(-1, keepdims=True)) * rstd),
        ("the term - mean(g) (through the mean) is missing", (g - xhat * (g * xhat).mean(-1, keepdims=True)) * rstd),
        ("w is missing: the gradient reaching xhat is g = dy * w, not dy",
         (dy - dy.mean(-1, keepdims=True) - xhat * (dy * xhat).mean(-1, keepdims=True)) * rstd),
    ])
    compare("layernorm_backward: dw", got[1], want[1], [
        ("dw must be summed over every position, to the shape (D,) of w", dy * xhat)])
    compare("layernorm_backward: db", got[2], want[2], [("db must be summed over every position, to (D,)", dy)])
    grad_check("layernorm_backward: dx", got[0], lambda: float((layernorm_forward(x, w, b, eps)[0] * dy).sum()), x)


@_graded("im2col")
def check_im2col(fn):
    """fn(x, P) -> (B, N, C*P*P): x (B, C, H, W) cut into P x P patches, in raster order over the
    grid, each flattened as (channel, row, column), the order of a conv weight (D, C, P, P)."""
    B, C, H, W, P = 2, 3, 8, 12, 4
    x = _rng().standard_normal((B, C, H, W))
    N = (H // P) * (W // P)
    want = _im2col(x, P, P, stride=P).reshape(B, N, C * P * P)
    grid = x.reshape(B, C, H // P, P, W // P, P)
    compare(f"im2col(x of shape {x.shape}, P={P})", _call(fn, x.copy(), P), want, [
        ("each row is a run of consecutive pixels, not a P x P patch: reshape to (B, C, H/P, P, W/P, P) "
         "and move the two grid axes to the front before flattening", x.reshape(B, N, C * P * P)),
        ("each patch is flattened as (row, column, channel): the channel must come first, "
         "(channel, row, column), to match a conv weight (D, C, P, P)",
         grid.transpose(0, 2, 4, 3, 5, 1).reshape(B, N, C * P * P)),
        ("the patches run down the columns of the grid first: raster order goes along each row of patches",
         grid.transpose(0, 4, 2, 1, 3, 5).reshape(B, N, C * P * P)),
    ])


@_graded("patch_embed")
def check_patch_embed(fn):
    """fn(x, w, b) -> tokens (B, N, D): x (B, C, H, W), w (D, C, P, P) a conv weight, b (D,)."""
    rng = _rng()
    B, C, H, W, P, D = 2, 3, 8, 8, 4, 6
    x, w, b = rng.standard_normal((B, C, H, W)), rng.standard_normal((D, C, P, P)), rng.standard_normal(D)
    want = patch_embed_forward(x, w, b)[0]
    cols = _im2col(x, P, P, stride=P).reshape(B, -1, C * P * P)
    compare("patch_embed(x, w, b)", _call(fn, x.copy(), w.copy(), b.copy()), want, [
        ("the bias is missing", want - b),
        ("the weight is flattened as (row, column, channel) while the patches are (channel, row, column): "
         "flatten w (D, C, P, P) as w.reshape(D, -1) so the orders agree",
         cols @ w.transpose(0, 2, 3, 1).reshape(D, -1).T + b),
    ])


@_graded("adamw_step")
def check_adamw_step(fn):
    """fn(p, g, m, v, t, lr, betas, eps, weight_decay) -> (p, m, v) after one AdamW step (t counts from 1)."""
    rng = _rng()
    p0 = rng.standard_normal((4, 5))
    grads = [rng.standard_normal((4, 5)) for _ in range(3)]
    lr, betas, eps, wd = 0.01, (0.9, 0.999), 1e-8, 0.1
    ref = AdamW(lr=lr, betas=betas, eps=eps, weight_decay=wd)
    want = {"w": p0.copy()}
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        ref.step(want, {"w": g})
        got = _outputs(f"adamw_step (step t={t})", _call(fn, p.copy(), g.copy(), m.copy(), v.copy(), t, lr, betas,
                                                         eps, wd), ["p", "m", "v"])
        m_want, v_want = ref.m["w"], ref.v["w"]
        step = lr * (m_want / (1 - betas[0] ** t)) / (np.sqrt(v_want / (1 - betas[1] ** t)) + eps)
        g_l2 = g + wd * p                                 # what L2 regularisation would feed Adam
        m_l2 = betas[0] * m + (1 - betas[0]) * g_l2
        v_l2 = betas[1] * v + (1 - betas[1]) * g_l2 * g_l2
        compare(f"adamw_step, step {t}: p", got[0], want["w"], [
            ("no bias correction: divide m by 1 - beta1^t and v by 1 - beta2^t",
             p * (1 - lr * wd) - lr * m_want / (np.sqrt(v_want) + eps)),
            ("no weight decay: AdamW also shrinks p by lr * weight_decay * p", p - step),
            ("the decay is weight_decay * p: it is scaled by the learning rate too, lr * weight_decay * p",
             p * (1 - wd) - step),
            ("this is Adam with L2 regularisation (weight_decay * p added to the gradient): AdamW decouples "
             "the decay, p <- p - lr * weight_decay * p, and keeps it out of m and v",
             p - lr * (m_l2 / (1 - betas[0] ** t)) / (np.sqrt(v_l2 / (1 - betas[1] ** t)) + eps)),
        ])
        compare(f"adamw_step, step {t}: m", got[1], m_want)
        compare(f"adamw_step, step {t}: v", got[2], v_want, [
            ("v must average the squared gradients, g * g", betas[1] * v + (1 - betas[1]) * g)])
        p, m, v = got


@_graded("maxpool_backward")
def check_maxpool_backward(fn):
    """fn(dy, x) -> dx (B, C, H, W) for y = 2x2 max pooling of x with stride 2, dy (B, C, H/2, W/2);
    where a window's maximum is tied, the first of its pixels in raster order wins (as torch)."""
    rng = _rng()
    x = rng.standard_normal((2, 3, 4, 6))                    # continuous draws: no ties
    dy = rng.standard_normal((2, 3, 2, 3))
    want = maxpool2x2_backward(dy, maxpool2x2_forward(x)[1])
    up = np.repeat(np.repeat(dy, 2, axis=2), 2, axis=3)      # dy copied to all four pixels of its window
    got = _call(fn, dy.copy(), x.copy())
    compare("maxpool_backward(dy, x)", got, want, [
        ("every pixel of the window got the gradient: only the window's maximum reaches y, so only it "
         "gets dy (the others get 0)", up),
        ("the gradient is spread evenly over the window, dy / 4 each: that is average pooling's backward; "
         "max pooling sends all of dy to the window's largest pixel", up / 4),
    ])
    grad_check("maxpool_backward(dy, x)", got, lambda: float((maxpool2x2_forward(x)[0] * dy).sum()), x)
    tied = np.maximum(x, 0.0)                                # after a ReLU, all-zero windows tie
    tied[0, 0, :2, :2] = 0.0
    want = maxpool2x2_backward(dy, maxpool2x2_forward(tied)[1])
    win = tied.reshape(2, 3, 2, 2, 3, 2)
    is_max = (win == win.max(axis=(3, 5), keepdims=True)).reshape(tied.shape)
    compare("maxpool_backward(dy, x) with tied maxima (x after a ReLU)", _call(fn, dy.copy(), tied.copy()), want, [
        ("every pixel equal to the window's maximum got the gradient: with ties (zeros after a ReLU) "
         "that counts dy several times; give it to one pixel, the first in raster order", up * is_max),
    ])

"""The notebooks' exercise checkers (minivit/tools/exercises.py): the solutions pass, the stubs are
reported as not written, and typical wrong answers are rejected with a message that names the
mistake."""
from pathlib import Path

import numpy as np
import pytest

from minivit.tools import exercises as ex

SOLUTIONS = Path(__file__).parent.parent / "notebooks" / "solutions"


def solutions():
    """Every solution file run in one namespace (patch_embed's solution calls my_im2col)."""
    ns = {"np": np}
    for path in sorted(SOLUTIONS.glob("*.py")):
        exec(compile(path.read_text(), str(path), "exec"), ns)
    return ns


SOL = solutions()
NAMES = ["softmax", "softmax_backward", "split_heads", "attention", "attention_backward",
         "layernorm_backward", "im2col", "patch_embed", "adamw_step", "maxpool_backward"]


def test_every_exercise_has_a_checker_and_a_solution():
    assert sorted(p.stem for p in SOLUTIONS.glob("*.py")) == sorted(NAMES)
    for name in NAMES:
        assert callable(getattr(ex, f"check_{name}")) and callable(SOL[f"my_{name}"])


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes(name, capsys):
    assert getattr(ex, f"check_{name}")(SOL[f"my_{name}"]) is None     # nothing for a notebook to echo as Out
    assert f"{name}: correct" in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_stub_is_not_written_yet_unless_strict(name, capsys, monkeypatch):
    def stub(*args):
        raise NotImplementedError
    check = getattr(ex, f"check_{name}")
    assert check(stub) is None
    assert "not written yet" in capsys.readouterr().out
    monkeypatch.setenv("MINIVIT_EXERCISES", "strict")
    with pytest.raises(ex.ExerciseError, match="NotImplementedError"):
        check(stub)


def rejects(check, fn, *words):
    """check(fn) must raise ExerciseError whose message holds every one of `words`."""
    with pytest.raises(ex.ExerciseError) as info:
        check(fn)
    for w in words:
        assert w in str(info.value), str(info.value)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_softmax_mistakes():
    rejects(ex.check_softmax, lambda x: _softmax(x, 0), "axis 0")
    rejects(ex.check_softmax, lambda x: _softmax(x, 1), "axis 1")
    rejects(ex.check_softmax, lambda x: np.exp(x) / np.exp(x).sum(), "sum of all the entries")
    rejects(ex.check_softmax, lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True), "Subtract each row's maximum")
    rejects(ex.check_softmax, lambda x: _softmax(x, -1)[..., :-1], "shape (2, 3, 4), expected (2, 3, 5)")
    rejects(ex.check_softmax, lambda x: _softmax(x, -1) * 1.001, "relative error", "largest difference")


def test_softmax_backward_mistakes():
    check = ex.check_softmax_backward
    rejects(check, lambda dp, p: p * dp, "off-diagonal")
    rejects(check, lambda dp, p: dp * p * (1 - p), "diagonal of the Jacobian")
    rejects(check, lambda dp, p: p * (dp - (dp * p).sum(0, keepdims=True)), "wrong axis")
    rejects(check, lambda dp, p: dp - (dp * p).sum(-1, keepdims=True), "relative error")


def test_split_heads_mistakes():
    check = ex.check_split_heads
    B_N_H_d = lambda x, h: (x.shape[0], x.shape[1], h, x.shape[2] // h)
    rejects(check, lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1), "reshaped straight to (B, H, N, d)")
    rejects(check, lambda x, h: x.reshape(x.shape[0], x.shape[1], -1, h).transpose(0, 3, 1, 2), "(d, H)")
    rejects(check, lambda x, h: x.reshape(B_N_H_d(x, h)), "swap axes 1 and 2")


def test_attention_mistakes():
    check = ex.check_attention
    scores = lambda q, k: q @ k.swapaxes(-1, -2)
    rejects(check, lambda q, k, v: _softmax(scores(q, k), -1) @ v, "not scaled")
    rejects(check, lambda q, k, v: _softmax(scores(q, k) / q.shape[-1], -1) @ v, "divided by d")
    rejects(check, lambda q, k, v: _softmax(scores(q, k) / np.sqrt(q.shape[-1]), -2) @ v, "over the queries")


def _attention_backward(dout, q, k, v, scale_grads=True, row_sum=True, transpose_p=True):
    """The solution with one of its usual mistakes switched on."""
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    p = _softmax(s, -1)
    dv = (p.swapaxes(-1, -2) if transpose_p else p) @ dout
    dp = dout @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) if row_sum else p * dp
    c = 1 / np.sqrt(q.shape[-1]) if scale_grads else 1.0
    return ds @ k * c, ds.swapaxes(-1, -2) @ q * c, dv


def test_attention_backward_mistakes():
    check = ex.check_attention_backward
    check(_attention_backward)  # a right answer raises nothing
    rejects(check, lambda *a: _attention_backward(*a, scale_grads=False), "dq", "1/sqrt(d)")
    rejects(check, lambda *a: _attention_backward(*a, row_sum=False), "dq", "rowsum(dp * p)")
    rejects(check, lambda *a: _attention_backward(*a, transpose_p=False), "dv", "p^T")
    rejects(check, lambda *a: _attention_backward(*a)[:2], "expected 3 results")
    # right values for dq and dv but not dk: the error names dk
    rejects(check, lambda *a: (lambda g: (g[0], g[1] * 1.01, g[2]))(_attention_backward(*a)), "dk", "relative error")


def _layernorm_backward(dy, x, w, eps, mean_term=True, var_term=True, use_w=True, sum_dw=True):
    """The solution with one of its usual mistakes switched on."""
    D = x.shape[-1]
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - x.mean(-1, keepdims=True)) * rstd
    g = dy * w if use_w else dy
    dx = g - (g.mean(-1, keepdims=True) if mean_term else 0) - (xhat * (g * xhat).mean(-1, keepdims=True)
                                                                if var_term else 0)
    dw = (dy * xhat).reshape(-1, D).sum(0) if sum_dw else dy * xhat
    return dx * rstd, dw, dy.reshape(-1, D).sum(0)


def test_layernorm_backward_mistakes():
    check = ex.check_layernorm_backward
    check(_layernorm_backward)  # a right answer raises nothing
    rejects(check, lambda *a: _layernorm_backward(*a, mean_term=False, var_term=False), "two mean terms")
    rejects(check, lambda *a: _layernorm_backward(*a, var_term=False), "through the variance")
    rejects(check, lambda *a: _layernorm_backward(*a, mean_term=False), "through the mean")
    rejects(check, lambda *a: _layernorm_backward(*a, use_w=False), "w is missing")
    rejects(check, lambda *a: _layernorm_backward(*a, sum_dw=False), "dw must be summed")


def test_im2col_mistakes():
    check = ex.check_im2col

    def grid(x, P):
        B, C, H, W = x.shape
        return x.reshape(B, C, H // P, P, W // P, P)
    flat = lambda t, x, P: t.reshape(x.shape[0], -1, x.shape[1] * P * P)
    rejects(check, lambda x, P: x.reshape(x.shape[0], -1, x.shape[1] * P * P), "run of consecutive pixels")
    rejects(check, lambda x, P: flat(grid(x, P).transpose(0, 2, 4, 3, 5, 1), x, P), "(row, column, channel)")
    rejects(check, lambda x, P: flat(grid(x, P).transpose(0, 4, 2, 1, 3, 5), x, P), "raster order")


def test_patch_embed_mistakes():
    check = ex.check_patch_embed
    im2col = SOL["my_im2col"]
    rejects(check, lambda x, w, b: im2col(x, w.shape[-1]) @ w.reshape(w.shape[0], -1).T, "bias is missing")
    rejects(check, lambda x, w, b: im2col(x, w.shape[-1]) @ w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1).T + b,
            "flattened as (row, column, channel)")


def _adamw(p, g, m, v, t, lr, betas, eps, wd, correct=True, decay="decoupled", v_of="g*g"):
    """The solution with one of its usual mistakes switched on."""
    b1, b2 = betas
    if decay == "l2":
        g = g + wd * p
    elif decay == "decoupled":
        p = p - lr * wd * p
    elif decay == "unscaled":
        p = p - wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * (g * g if v_of == "g*g" else g)
    mh, vh = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if correct else (m, v)
    return p - lr * mh / (np.sqrt(np.abs(vh)) + eps), m, v


def test_adamw_step_mistakes():
    check = ex.check_adamw_step
    check(_adamw)  # a right answer raises nothing
    rejects(check, lambda *a: _adamw(*a, correct=False), "no bias correction")
    rejects(check, lambda *a: _adamw(*a, decay="none"), "no weight decay")
    rejects(check, lambda *a: _adamw(*a, decay="unscaled"), "scaled by the learning rate")
    rejects(check, lambda *a: _adamw(*a, decay="l2"), "L2 regularisation")
    rejects(check, lambda *a: _adamw(*a, v_of="g"), "step 1")


def test_maxpool_backward_mistakes():
    check = ex.check_maxpool_backward
    up = lambda dy: np.repeat(np.repeat(dy, 2, axis=2), 2, axis=3)

    def every_max(dy, x):  # ties: every pixel equal to the maximum gets dy
        B, C, H, W = x.shape
        win = x.reshape(B, C, H // 2, 2, W // 2, 2)
        return up(dy) * (win == win.max(axis=(3, 5), keepdims=True)).reshape(x.shape)

    def no_transpose(dy, x):  # windows read as 4 consecutive pixels of a row
        B, C, H, W = x.shape
        win = x.reshape(B, C, H // 2, W // 2, 4)
        return (np.eye(4)[win.argmax(-1)] * dy[..., None]).reshape(x.shape)
    rejects(check, lambda dy, x: up(dy), "every pixel of the window")
    rejects(check, lambda dy, x: up(dy) / 4, "average pooling")
    rejects(check, every_max, "first in raster order")
    rejects(check, no_transpose, "relative error")


def test_a_wrong_answer_shows_one_message_and_none_of_the_checkers_lines():
    import traceback
    with pytest.raises(ex.ExerciseError) as info:
        ex.check_softmax(lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True))
    frames = traceback.extract_tb(info.value.__traceback__)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert all("compare(" not in (f.line or "") and "want" not in (f.line or "") for f in frames)
    assert len([f for f in frames if f.filename.endswith(("tools/exercises.py", "tools\\exercises.py"))]) == 1  # the re-raise


def test_a_softmax_without_keepdims_is_told_about_keepdims():
    rejects(ex.check_softmax, lambda x: np.exp(x - x.max(-1)) / np.exp(x).sum(-1), "keepdims=True")


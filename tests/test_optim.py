"""Optimisers, clipping and the schedule, checked against their defining formulas."""
import math

import numpy as np
import pytest

import minivit as mv


def test_adamw_step_counter_advances_and_bias_correction():
    """After one step from zero state, Adam's update is lr * g / (|g| + eps') = lr * sign(g)."""
    p = {"w": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    g = {"w": np.array([[0.3, -0.01]]), "b": np.array([2.0])}
    opt = mv.AdamW(lr=0.1, weight_decay=0.0, eps=0.0)
    opt.step(p, g)
    assert opt.t == 1
    np.testing.assert_allclose(p["w"], [[0.9, -1.9]], rtol=1e-12)
    opt.step(p, g)
    assert opt.t == 2  # a counter that never advances would leave bias corrections at step 1


@pytest.mark.parametrize("head", ["classify", "mpp"])
def test_adamw_decays_only_matrices_not_cls_or_pos(head):
    cfg = mv.ViTConfig.preset("test", head=head)
    params = mv.init_params(cfg, dtype="float64")
    params["cls_token"] += 1.0
    before = {k: v.copy() for k, v in params.items()}
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    mv.AdamW(lr=0.1, weight_decay=0.5).step(params, zeros)  # zero gradient: only decay acts
    for k, v in params.items():
        if before[k].ndim >= 2 and k not in ("cls_token", "pos_embed", "mask_token"):
            np.testing.assert_allclose(v, before[k] * (1 - 0.1 * 0.5), rtol=1e-12, err_msg=k)
        else:
            np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_sgd_momentum():
    p = {"w": np.array([1.0])}
    opt = mv.SGD(lr=0.1, momentum=0.9)
    opt.step(p, {"w": np.array([1.0])})   # u = 1
    opt.step(p, {"w": np.array([1.0])})   # u = 1.9
    np.testing.assert_allclose(p["w"], [1.0 - 0.1 - 0.19], rtol=1e-12)


def test_clip_grad_norm():
    g = {"a": np.array([3.0]), "b": np.array([[4.0]])}
    assert mv.clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    assert mv.global_norm(g) == pytest.approx(1.0, rel=1e-6)
    g2 = {"a": np.array([0.3])}
    mv.clip_grad_norm(g2, 1.0)
    assert g2["a"][0] == 0.3  # below the bound: untouched


def test_global_norm_of_float32_gradients_matches_float64():
    rng = np.random.default_rng(0)
    g = {"w": rng.standard_normal((300, 200)).astype(np.float32), "b": rng.standard_normal(200).astype(np.float32)}
    exact = math.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in g.values()))
    assert mv.global_norm(g) == pytest.approx(exact, rel=1e-6)


def test_global_norm_stays_finite_when_float32_squares_overflow():
    # 1e20 squared is above float32's largest number (3.4e38): the float32 sum overflows to inf
    g = {"w": np.full((4, 4), 1e20, dtype=np.float32), "b": np.ones(3, dtype=np.float32)}
    assert mv.global_norm(g) == pytest.approx(math.sqrt(16 * float(np.float32(1e20)) ** 2 + 3), rel=1e-6)
    mv.clip_grad_norm(g, 1.0)
    assert np.isfinite(g["w"]).all() and mv.global_norm(g) == pytest.approx(1.0, rel=1e-5)


def test_warmup_then_cosine():
    lrs = [mv.warmup_decay(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # non-increasing after warmup
    assert lrs[10 + 45] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert mv.warmup_decay(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_optimizer_state_round_trip():
    cfg = mv.ViTConfig.preset("test")
    p1, p2 = mv.init_params(cfg, dtype="float64"), mv.init_params(cfg, dtype="float64")
    g = {k: np.full_like(v, 0.01) for k, v in p1.items()}
    o1 = mv.AdamW(lr=0.01)
    o1.step(p1, g)
    o2 = mv.AdamW(lr=0.01)
    o2.load_state_dict({k: (v.copy() if hasattr(v, "copy") else v) for k, v in o1.state_dict().items()})
    p2 = {k: v.copy() for k, v in p1.items()}
    o1.step(p1, g)
    o2.step(p2, g)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)

"""The Figure 7 quantities and attention rollout, on cases whose answer is known."""
import numpy as np
import pytest

import minivit as mv
from minivit.tools import visualize as vz


def model_and_cache():
    cfg = mv.ViTConfig.preset("test", depth=3)
    params = mv.init_params(cfg, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    return cfg, params, mv.forward(params, x, cfg)[1]


def test_attention_maps_are_row_stochastic():
    cfg, _, cache = model_and_cache()
    maps = vz.attention_maps(cache)
    assert len(maps) == cfg.depth
    for a in maps:
        assert a.shape == (2, cfg.heads, cfg.num_patches + 1, cfg.num_patches + 1)
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)


def test_rollout_of_self_attention_is_identity_and_rows_sum_to_one():
    T = 5
    eye = np.broadcast_to(np.eye(T), (1, 2, T, T))
    np.testing.assert_allclose(vz.attention_rollout([eye, eye]), np.eye(T)[None])
    _, _, cache = model_and_cache()
    r = vz.attention_rollout(vz.attention_maps(cache))
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-6)
    # one layer of uniform attention: (U + I)/2 by hand
    U = np.full((1, 1, T, T), 1 / T)
    np.testing.assert_allclose(vz.attention_rollout([U])[0], 0.5 * (U[0, 0] + np.eye(T)))


def test_mean_attention_distance():
    grid, P = 3, 4
    N = grid * grid
    self_only = np.zeros((1, 1, N + 1, N + 1))
    self_only[0, 0, np.arange(N + 1), np.arange(N + 1)] = 1
    assert vz.mean_attention_distance([self_only], grid, P)[0, 0] == 0
    uniform = np.full((1, 1, N + 1, N + 1), 1 / (N + 1))
    ys, xs = np.divmod(np.arange(N), grid)
    d = np.hypot(ys[:, None] - ys[None], xs[:, None] - xs[None]) * P
    np.testing.assert_allclose(vz.mean_attention_distance([uniform], grid, P)[0, 0], d.mean())


def test_filter_components_are_orthonormal():
    w = np.random.default_rng(0).standard_normal((20, 3, 4, 4))
    comps, ratio = vz.patch_filter_components(w, k=6)
    assert comps.shape == (6, 4, 4, 3)
    flat = comps.transpose(0, 3, 1, 2).reshape(6, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(6), atol=1e-10)
    assert np.all(np.diff(ratio) <= 0) and ratio.sum() <= 1


def test_position_similarity():
    cfg = mv.ViTConfig.preset("test")
    sim = vz.position_similarity(mv.init_params(cfg)["pos_embed"], cfg.grid)
    assert sim.shape == (2, 2, 2, 2)
    for i in range(2):
        for j in range(2):
            assert abs(sim[i, j, i, j] - 1) < 1e-6


@pytest.mark.parametrize("preset,overrides", [("cifar-small", {}), ("cifar-hybrid", {"pool": "gap"}),
                                               ("vit-b16", {"num_classes": 10})])
def test_the_architecture_picture_shows_the_configs_shapes(tmp_path, preset, overrides):
    from minivit.tools.diagram import draw_architecture
    cfg = mv.ViTConfig.preset(preset, **overrides)
    fig = draw_architecture(cfg, tmp_path / "a.png")
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert f"({cfg.num_patches}, {cfg.dim})" in text and f"({cfg.num_patches + 1}, {cfg.dim})" in text
    assert f"encoder block x {cfg.depth}" in text and f"({cfg.num_classes},)" in text
    assert ("class token" if cfg.pool == "token" else "token mean") in text
    assert (tmp_path / "a.png").stat().st_size > 10_000

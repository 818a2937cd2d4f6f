"""The whole model: gradient checks, parameter counts, initial loss, overfitting a batch."""
import math

import numpy as np
import pytest

import minivit as mv
from helpers import check_grads


def perturbed_params(cfg, seed=0, scale=0.1):
    """float64 params moved off the init's zeros and ones, so every gradient path is live."""
    rng = np.random.default_rng(seed + 100)
    params = mv.init_params(cfg, seed=seed, dtype="float64")
    return {k: v + scale * rng.standard_normal(v.shape) for k, v in params.items()}


@pytest.mark.parametrize("overrides", [
    dict(pool="token", gelu="exact"),
    dict(pool="gap", gelu="exact"),
    dict(pool="token", gelu="tanh"),
    dict(pool="gap", gelu="tanh", pos_embed="sincos"),
    dict(pool="token", dropout=0.2, attn_dropout=0.1),   # dropout with a fixed mask: same seed each call
    dict(pos_embed="learned2d"),
    dict(pos_embed="none"),
    dict(pos_embed="learned", pos_embed_every_layer=True),
    dict(pos_embed="learned2d", pos_embed_every_layer=True, pool="gap"),
    dict(pos_embed="sincos", pos_embed_every_layer=True),
    dict(pos_embed="relative"),
    dict(pos_embed="relative", dropout=0.2, attn_dropout=0.1),
    dict(image_size=16, stem_channels=(4, 8), stem_strides=(1, 2), stem_groups=2),   # the hybrid
    dict(layer_scale=0.5, drop_path=0.5, dropout=0.1),   # LayerScale and stochastic depth, fixed masks
], ids=["token-exact", "gap-exact", "token-tanh", "gap-tanh-sincos", "dropout", "learned2d", "no-positions",
        "learned-every-layer", "learned2d-every-layer-gap", "sincos-every-layer", "relative", "relative-dropout", "hybrid",
        "layer-scale-drop-path"])
def test_model_gradcheck(overrides):
    cfg = mv.ViTConfig.preset("test", **overrides)
    params = perturbed_params(cfg)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, cfg.image_size, cfg.image_size))
    y = np.array([1, 4])
    train = cfg.dropout > 0

    def loss():
        logits, _ = mv.forward(params, x, cfg, train=train, rng=np.random.default_rng(9))
        return float(mv.cross_entropy(logits, y, 0.1)[0])

    logits, cache = mv.forward(params, x, cfg, train=train, rng=np.random.default_rng(9))
    _, dlogits = mv.cross_entropy(logits, y, 0.1)
    grads = mv.backward(dlogits, cache)
    assert list(grads) == list(params)
    assert all(grads[k].shape == params[k].shape for k in params)
    check_grads(loss, params, grads, max_entries=12)


def test_exact_parameter_counts():
    """Table 1 of the paper (timm's vit_*_patch16_224 counts: 5.7M, 22.1M, 86.6M, 304M, 632M).
    Each is derived below from the layer shapes, independently of param_shapes."""
    def by_hand(D, L, M, P, K=1000, C=3, S=224):
        N = (S // P) ** 2
        embed = D * C * P * P + D + D + (N + 1) * D            # projection, class token, positions
        block = 2 * 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * M + M) + (M * D + D)
        return embed + L * block + 2 * D + D * K + K           # final norm, head
    expected = {"vit-ti16": by_hand(192, 12, 768, 16), "vit-s16": by_hand(384, 12, 1536, 16),
                "vit-b16": by_hand(768, 12, 3072, 16), "vit-l16": by_hand(1024, 24, 4096, 16),
                "vit-h14": by_hand(1280, 32, 5120, 14)}
    assert expected["vit-b16"] == 86_567_656  # timm's vit_base_patch16_224
    for name, n in expected.items():
        assert mv.count_params(mv.ViTConfig.preset(name)) == n, name
    for name in ("cifar-tiny", "cifar-small", "cifar-base", "test"):
        cfg = mv.ViTConfig.preset(name)
        assert sum(v.size for v in mv.init_params(cfg).values()) == mv.count_params(cfg)
        assert mv.count_params(cfg) == by_hand(cfg.dim, cfg.depth, cfg.mlp_dim, cfg.patch_size,
                                                cfg.num_classes, cfg.in_channels, cfg.image_size)


def test_sincos_has_no_position_parameter():
    cfg = mv.ViTConfig.preset("test", pos_embed="sincos")
    assert "pos_embed" not in mv.init_params(cfg)
    assert mv.count_params(cfg) == mv.count_params(mv.ViTConfig.preset("test")) - 5 * cfg.dim
    pe = mv.sincos_pos_embed(cfg)
    assert pe.shape == (1, 5, cfg.dim) and np.all(pe[0, 0] == 0)
    assert np.allclose((pe[0, 1:] ** 2).sum(-1), cfg.dim / 2)  # sin^2 + cos^2 per frequency pair


def test_init_follows_the_original_vit():
    cfg = mv.ViTConfig.preset("cifar-small")
    p = mv.init_params(cfg, seed=0)
    assert np.all(p["cls_token"] == 0) and np.all(p["head.w"] == 0) and np.all(p["head.b"] == 0)
    assert abs(p["pos_embed"].std() - 0.02) < 0.002
    bound = math.sqrt(6 / (cfg.dim + cfg.mlp_dim))
    w = p["blocks.0.mlp.fc1.w"]
    assert w.max() <= bound and w.min() >= -bound and w.max() > 0.95 * bound
    assert np.all(p["blocks.0.norm1.w"] == 1)
    a, b = mv.init_params(cfg, seed=0), mv.init_params(cfg, seed=1)
    assert all(np.array_equal(a[k], p[k]) for k in p)
    assert not np.array_equal(a["blocks.0.attn.qkv.w"], b["blocks.0.attn.qkv.w"])


@pytest.mark.parametrize("preset", ["test", "cifar-tiny"])
def test_initial_loss_is_log_num_classes(preset):
    cfg = mv.ViTConfig.preset(preset)
    params = mv.init_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, cfg.image_size, cfg.image_size)).astype(np.float32)
    logits, _ = mv.forward(params, x, cfg)
    loss, _ = mv.cross_entropy(logits, rng.integers(0, cfg.num_classes, 16))
    assert abs(float(loss) - math.log(cfg.num_classes)) < 0.05


def test_overfits_a_small_batch():
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3, 8, 8))
    y = np.arange(10) % cfg.num_classes
    opt = mv.AdamW(lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(300):
        logits, cache = mv.forward(params, x, cfg)
        loss, dlogits = mv.cross_entropy(logits, y)
        losses.append(float(loss))
        opt.step(params, mv.backward(dlogits, cache))
    assert losses[0] > 1.5 and losses[-1] < 0.01, (losses[0], losses[-1])


def test_eval_is_deterministic_and_train_dropout_varies():
    cfg = mv.ViTConfig.preset("test", dropout=0.3)
    params = mv.init_params(cfg)
    # A random head so the logits depend on the tokens. (A constant one would not: the final
    # LayerNorm's features sum to zero, so every logit would be rounding noise near 1e-8.)
    params["head.w"] = np.random.default_rng(1).standard_normal(params["head.w"].shape).astype(np.float32) * 0.1
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a, _ = mv.forward(params, x, cfg)
    b, _ = mv.forward(params, x, cfg)
    np.testing.assert_array_equal(a, b)
    c, _ = mv.forward(params, x, cfg, train=True, rng=np.random.default_rng(0))
    assert not np.allclose(a, c)


def test_float32_forward_keeps_dtype():
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg)
    logits, cache = mv.forward(params, np.zeros((1, 3, 8, 8), np.float64), cfg)
    assert logits.dtype == np.float32
    grads = mv.backward(np.ones_like(logits), cache)
    assert all(g.dtype == np.float32 for g in grads.values())


def test_inference_without_cache_gives_the_same_logits():
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=1, dtype="float64")
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8))
    logits, cache = mv.forward(params, x, cfg)
    fast, none = mv.forward(params, x, cfg, keep_cache=False)
    assert none is None and cache is not None
    np.testing.assert_array_equal(fast, logits)


def test_inference_memory_does_not_grow_with_depth():
    """keep_cache=False frees each activation once the next layer has read it, so inference's
    peak is one block's working set whatever the depth; with caches kept it grows by a block's
    cache per layer (which shows the measure can see what is retained)."""
    import tracemalloc
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)

    def peak(depth, keep_cache):
        cfg = mv.ViTConfig.preset("cifar-tiny", depth=depth)
        params = mv.init_params(cfg, seed=0)
        tracemalloc.start()
        mv.forward(params, x, cfg, keep_cache=keep_cache)
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    one_block = peak(1, True) - peak(1, False)   # what one block's caches hold, and more
    assert one_block > 0
    assert peak(4, False) - peak(1, False) < one_block / 10
    assert peak(4, True) - peak(1, True) > 2 * one_block


def test_hybrid_parameter_count():
    """cifar-hybrid = cifar-tiny's encoder on a conv stem: the stem's 3x3 kernels and GroupNorms,
    and a 2x2 patch projection from 64 channels instead of cifar-tiny's 4x4 one from 3."""
    stem = 3 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64
    tiny_patch, hybrid_patch = 64 * 3 * 4 * 4 + 64, 64 * 64 * 2 * 2 + 64
    tiny = mv.count_params(mv.ViTConfig.preset("cifar-tiny"))
    assert mv.count_params(mv.ViTConfig.preset("cifar-hybrid")) == tiny - tiny_patch + hybrid_patch + stem


def test_mimetic_init_products():
    """Each head's W_q W_k^T is the rank-d SVD truncation of a1 Z + b1 I, so its diagonal is
    strongly positive; W_v W_proj is a2 Z - b2 I, full rank: its trace is near -b2 D."""
    from minivit.models.init import MIMETIC_QK, MIMETIC_VO, mimetic_attention
    D, heads = 64, 4
    d = D // heads
    wqkv, wproj = mimetic_attention(np.random.default_rng(0), D, heads)
    assert wqkv.shape == (D, 3 * D) and wproj.shape == (D, D)
    vo = wqkv[:, 2 * D:] @ wproj
    z = (vo + MIMETIC_VO[1] * np.eye(D)) / MIMETIC_VO[0]        # the noise it was built from
    assert abs(z.std() * np.sqrt(D) - 1) < 0.05 and abs(np.trace(vo) / D + MIMETIC_VO[1]) < 0.05
    for h in range(heads):
        qk = wqkv[:, h * d:(h + 1) * d] @ wqkv[:, D + h * d:D + (h + 1) * d].T
        assert np.linalg.matrix_rank(qk) == d
        assert np.trace(qk) / D > 0.5 * MIMETIC_QK[1] * d / D    # a positive diagonal: near +I on its rank-d part
    cfg = mv.ViTConfig.preset("test", attn_init="mimetic")
    a, b = mv.init_params(cfg, seed=3), mv.init_params(mv.ViTConfig.preset("test"), seed=3)
    assert not np.array_equal(a["blocks.0.attn.qkv.w"], b["blocks.0.attn.qkv.w"])
    assert np.array_equal(a["blocks.0.mlp.fc1.w"], b["blocks.0.mlp.fc1.w"])   # drawn before: the rest is unchanged
    with pytest.raises(mv.ConfigError, match="attn_init"):
        mv.ViTConfig.preset("test", attn_init="orthogonal")

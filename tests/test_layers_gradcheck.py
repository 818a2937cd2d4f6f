"""Every hand-written backward against centred finite differences, in float64: each test twice, with
the fused CPU kernels (minivit/cpu/kernels.py, where numba is installed) and with the NumPy lines."""
import numpy as np
import pytest

import minivit as mv
from minivit.models import block
from minivit.train import optim
from helpers import check_grads, kernels, rel_error, scalar_of

rng = np.random.default_rng(0)


@pytest.fixture(autouse=True, params=["kernels", "numpy-lines"])
def path(request):
    with kernels(request.param == "kernels"):
        yield request.param


def randn(*shape):
    return rng.standard_normal(shape)


def test_linear():
    x, w, b = randn(2, 3, 5), randn(5, 4), randn(4)
    out, cache = mv.linear_forward(x, w, b)
    R = randn(*out.shape)
    dx, dw, db = mv.linear_backward(R, cache)
    f = scalar_of(lambda: mv.linear_forward(x, w, b)[0], R)
    check_grads(f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (2, 1, 0), (4, 4, 0), (5, 2, 2)])
def test_im2col_col2im_adjoint(k, stride, pad):
    """col2im is the adjoint of im2col: <im2col(x), c> = <x, col2im(c)> for all x, c. With
    overlapping windows (stride < k) this only holds if col2im accumulates overlaps."""
    x = randn(2, 3, 7, 8) if (k, stride) != (4, 4) else randn(2, 3, 8, 8)
    cols = mv.im2col(x, k, k, stride, pad)
    c = randn(*cols.shape)
    lhs = (cols * c).sum()
    rhs = (x * mv.col2im(c, x.shape, k, k, stride, pad)).sum()
    assert abs(lhs - rhs) < 1e-10 * (abs(lhs) + 1)


def test_im2col_matches_direct_windows():
    x = randn(1, 2, 5, 5)
    cols = mv.im2col(x, 3, 3, stride=2, pad=1)  # rows (i, j), columns (c, u, v)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            window = xpad[0, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(-1)
            np.testing.assert_array_equal(cols[i * 3 + j], window)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 2), (2, 2, 0)])
def test_conv2d(k, stride, pad):
    x, w, b = randn(2, 3, 6, 7), randn(4, 3, k, k), randn(4)
    out, cache = mv.conv2d_forward(x, w, b, stride, pad)
    R = randn(*out.shape)
    dx, dw, db = mv.conv2d_backward(R, cache)
    f = scalar_of(lambda: mv.conv2d_forward(x, w, b, stride, pad)[0], R)
    check_grads(f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


def test_patch_embed_is_conv_with_kernel_equal_stride():
    x, w, b = randn(2, 3, 8, 8), randn(6, 3, 4, 4), randn(6)
    tokens, cache = mv.patch_embed_forward(x, w, b)
    conv, _ = mv.conv2d_forward(x, w, b, stride=4)  # (B, D, 2, 2)
    np.testing.assert_allclose(tokens, conv.reshape(2, 6, 4).transpose(0, 2, 1), rtol=1e-12)
    R = randn(*tokens.shape)
    dx, dw, db = mv.patch_embed_backward(R, cache)
    f = scalar_of(lambda: mv.patch_embed_forward(x, w, b)[0], R)
    check_grads(f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


def test_patch_embed_shapes_of_the_paper():
    """224x224x3 with P = 16 -> 14x14 patches of 16*16*3 = 768 values -> 196 tokens of width D."""
    x = np.zeros((1, 3, 224, 224))
    cols = mv.im2col(x, 16, 16, stride=16)
    assert cols.shape == (196, 768)
    tokens, _ = mv.patch_embed_forward(x, np.zeros((768, 3, 16, 16)), np.zeros(768))
    assert tokens.shape == (1, 196, 768)


def test_layernorm():
    x, w, b = randn(2, 3, 6) * 3 + 1, randn(6), randn(6)
    out, cache = mv.layernorm_forward(x, w, b, 1e-6)
    R = randn(*out.shape)
    dx, dw, db = mv.layernorm_backward(R, cache)
    f = scalar_of(lambda: mv.layernorm_forward(x, w, b, 1e-6)[0], R)
    check_grads(f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


@pytest.mark.parametrize("approximate", ["exact", "tanh"])
def test_gelu(approximate):
    x = randn(3, 7) * 2
    out, cache = mv.gelu_forward(x, approximate)
    R = randn(*out.shape)
    dx = mv.gelu_backward(R, cache)
    check_grads(scalar_of(lambda: mv.gelu_forward(x, approximate)[0], R), {"x": x}, {"x": dx})


def test_gelu_forms_are_distinct_but_close():
    """docs/derivations/gelu.md: the forms differ by at most 4.7e-4, at x = +-2.70 (the difference is even)."""
    x = np.linspace(-6, 6, 120_001)
    diff = np.abs(mv.gelu_forward(x, "exact")[0] - mv.gelu_forward(x, "tanh")[0])
    assert 4.65e-4 < diff.max() < 4.75e-4
    assert abs(abs(x[diff.argmax()]) - 2.70) < 0.01
    np.testing.assert_allclose(diff, diff[::-1], atol=1e-15)


def test_dropout_fixed_mask():
    x = randn(4, 5)
    out, mask = mv.dropout_forward(x, 0.3, np.random.default_rng(1), train=True)
    assert set(np.unique(mask)) <= {0.0, 1 / 0.7}
    R = randn(*out.shape)
    dx = mv.dropout_backward(R, mask)
    f = scalar_of(lambda: mv.dropout_forward(x, 0.3, np.random.default_rng(1), train=True)[0], R)
    check_grads(f, {"x": x}, {"x": dx})


def test_dropout_is_identity_in_eval_and_unbiased_in_train():
    x = np.ones((200, 200))
    assert mv.dropout_forward(x, 0.5, None, train=False)[0] is x
    out, _ = mv.dropout_forward(x, 0.5, np.random.default_rng(0), train=True)
    assert abs(out.mean() - 1.0) < 0.02 and (out == 0).mean() > 0.45


def test_softmax_stable_and_backward():
    s = randn(2, 3, 5)
    big = mv.softmax(np.array([[1000.0, 1001.0, 1002.0]]))
    assert np.isfinite(big).all()
    np.testing.assert_allclose(big, mv.softmax(np.array([[0.0, 1.0, 2.0]])), rtol=1e-12)
    p = mv.softmax(s)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    R = randn(*s.shape)
    ds = mv.softmax_backward(R, p)
    check_grads(scalar_of(lambda: mv.softmax(s), R), {"s": s}, {"s": ds})


@pytest.mark.parametrize("p_drop", [0.0, 0.25])
def test_attention(p_drop):
    q, k, v = randn(2, 3, 4, 5), randn(2, 3, 4, 5), randn(2, 3, 4, 5)
    fwd = lambda: mv.attention_forward(q, k, v, p_drop=p_drop, rng=np.random.default_rng(3), train=True)
    out, cache = fwd()
    R = randn(*out.shape)
    dq, dk, dv = mv.attention_backward(R, cache)
    check_grads(scalar_of(lambda: fwd()[0], R), {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv})


def test_mhsa():
    D, H = 6, 2
    x, wq, bq, wp, bp = randn(2, 4, D), randn(D, 3 * D), randn(3 * D), randn(D, D), randn(D)
    out, cache = mv.mhsa_forward(x, wq, bq, wp, bp, H)
    R = randn(*out.shape)
    grads = mv.mhsa_backward(R, cache)
    f = scalar_of(lambda: mv.mhsa_forward(x, wq, bq, wp, bp, H)[0], R)
    check_grads(f, dict(x=x, wq=wq, bq=bq, wp=wp, bp=bp), dict(zip(["x", "wq", "bq", "wp", "bp"], grads)))


def test_mhsa_heads_are_independent_attentions():
    """Splitting into heads and concatenating equals running attention on each slice alone."""
    D, H = 6, 3
    x, wq, bq = randn(1, 4, D), randn(D, 3 * D), randn(3 * D)
    out, _ = mv.mhsa_forward(x, wq, bq, np.eye(D), np.zeros(D), H)
    qkv = x[0] @ wq + bq
    q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
    d = D // H
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        ref = mv.softmax(q[:, sl] @ k[:, sl].T / np.sqrt(d)) @ v[:, sl]
        np.testing.assert_allclose(out[0][:, sl], ref, rtol=1e-12)


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_mlp(gelu):
    x, w1, b1, w2, b2 = randn(2, 3, 4), randn(4, 8), randn(8), randn(8, 4), randn(4)
    fwd = lambda: mv.mlp_forward(x, w1, b1, w2, b2, gelu, 0.2, np.random.default_rng(5), True)
    out, cache = fwd()
    R = randn(*out.shape)
    grads = mv.mlp_backward(R, cache)
    check_grads(scalar_of(lambda: fwd()[0], R), dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2),
                dict(zip(["x", "w1", "b1", "w2", "b2"], grads)))


def test_encoder_block():
    cfg = mv.ViTConfig.preset("test", dropout=0.1, attn_dropout=0.1)
    params = {k: v.astype(np.float64) for k, v in mv.init_params(cfg, seed=1).items()}
    for k in params:  # move off the init's ones and zeros so every path carries gradient
        params[k] += 0.1 * randn(*params[k].shape)
    block = {k: v for k, v in params.items() if k.startswith("blocks.0.")}
    x = randn(2, 5, cfg.dim)
    fwd = lambda: mv.block_forward(x, params, "blocks.0.", cfg, np.random.default_rng(7), True)
    out, cache = fwd()
    R = randn(*out.shape)
    grads = {}
    dx = mv.block_backward(R, cache, grads)
    assert set(grads) == set(block)
    check_grads(scalar_of(lambda: fwd()[0], R), {"x": x, **block}, {"x": dx, **grads})


def test_encoder_block_with_layer_scale_and_drop_path():
    """LayerScale's gains get their gradient, and a dropped image's branches pass none to their
    weights; the seed is chosen so that the batch has both dropped and kept images."""
    cfg = mv.ViTConfig.preset("test", layer_scale=0.3)
    params = {k: v.astype(np.float64) + 0.1 * randn(*v.shape) for k, v in mv.init_params(cfg, seed=1).items()}
    block = {k: v for k, v in params.items() if k.startswith("blocks.0.")}
    assert {"blocks.0.ls1.gamma", "blocks.0.ls2.gamma"} <= set(block)
    x = randn(4, 5, cfg.dim)
    fwd = lambda: mv.block_forward(x, params, "blocks.0.", cfg, np.random.default_rng(1), True, drop_path=0.5)
    out, cache = fwd()
    masks = [cache.drop_path1.ravel(), cache.drop_path2.ravel()]      # (B,) of 0 or 2
    assert all(set(m.tolist()) == {0.0, 2.0} for m in masks)
    R = randn(*out.shape)
    grads = {}
    dx = mv.block_backward(R, cache, grads)
    assert set(grads) == set(block)
    check_grads(scalar_of(lambda: fwd()[0], R), {"x": x, **block}, {"x": dx, **grads})
    eval_out = mv.block_forward(x, params, "blocks.0.", cfg, None, False, drop_path=0.5)[0]   # identity at test time
    np.testing.assert_array_equal(eval_out, mv.block_forward(x, params, "blocks.0.", cfg)[0])


def test_drop_path_rates_and_layer_scale_init():
    cfg = mv.ViTConfig.preset("test", depth=5, drop_path=0.2, layer_scale=1e-4)
    assert [block.drop_path_rate(cfg, i) for i in range(5)] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])
    params = mv.init_params(cfg)
    assert np.all(params["blocks.4.ls2.gamma"] == np.float32(1e-4))
    assert not optim.decays("blocks.4.ls2.gamma", params["blocks.4.ls2.gamma"])
    with pytest.raises(mv.ConfigError, match="drop_path"):
        mv.ViTConfig.preset("test", drop_path=1.0)
    with pytest.raises(mv.ConfigError, match="layer_scale"):
        mv.ViTConfig.preset("test", layer_scale=-1.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(smoothing):
    z, y = randn(4, 5), np.array([0, 3, 4, 3])
    loss, dz = mv.cross_entropy(z, y, smoothing)
    check_grads(lambda: float(mv.cross_entropy(z, y, smoothing)[0]), {"z": z}, {"z": dz})


def test_cross_entropy_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]])
    loss, dz = mv.cross_entropy(z, np.array([0, 0]), 0.1)
    assert np.isfinite(loss) and np.isfinite(dz).all()
    # log-probabilities are exact here: row 0 (0, -1e4, -2e4), row 1 (-1e4, 0, -1e4).
    # loss_i = -sum_k q_k log p_k with q = (0.9 + 0.1/3, 0.1/3, 0.1/3) for label 0.
    row0 = 0.1 / 3 * (1e4 + 2e4)
    row1 = (0.9 + 0.1 / 3) * 1e4 + 0.1 / 3 * 1e4
    expected = (row0 + row1) / 2
    assert rel_error(loss, expected) < 1e-12


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_groupnorm(groups):
    x, w, b = randn(2, 6, 3, 4) * 2 + 1, randn(6), randn(6)
    out, cache = mv.layers.stem.groupnorm_forward(x, w, b, groups)
    R = randn(*out.shape)
    dx, dw, db = mv.layers.stem.groupnorm_backward(R, cache)
    f = scalar_of(lambda: mv.layers.stem.groupnorm_forward(x, w, b, groups)[0], R)
    check_grads(f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


def test_relu_away_from_its_kink():
    x = randn(4, 5)
    x[np.abs(x) < 0.1] = 0.5                                  # finite differences need |x| > h
    out, mask = mv.layers.stem.relu_forward(x)
    R = randn(*x.shape)
    check_grads(scalar_of(lambda: mv.layers.stem.relu_forward(x)[0], R), {"x": x}, {"x": mv.layers.stem.relu_backward(R, mask)})
    np.testing.assert_array_equal(out, np.maximum(x, 0))


# ---------------------------------------------------------------- PatchDropout (Liu et al., 2023)

def test_patch_dropout_keeps_the_class_token_and_passes_gradients_back_to_the_kept_tokens():
    from minivit.layers.activations import patch_dropout_backward, patch_dropout_forward
    z = randn(3, 9, 4)                                                   # 8 patch tokens and the class token
    fwd = lambda: patch_dropout_forward(z, 0.5, np.random.default_rng(4), True)
    out, cache = fwd()
    keep, _ = cache
    assert out.shape == (3, 5, 4) and np.array_equal(out[:, 0], z[:, 0])       # K = 4 of 8, the class token kept
    assert all(np.array_equal(out[b, 1:], z[b, 1 + keep[b]]) for b in range(3))
    assert all(len(set(k)) == 4 and list(k) == sorted(k) for k in keep)         # distinct, in order
    R = randn(*out.shape)
    dz = patch_dropout_backward(R, cache)
    check_grads(scalar_of(lambda: fwd()[0], R), {"z": z}, {"z": dz})
    assert np.array_equal(patch_dropout_forward(z, 0.0, None, True)[0], z)      # a keep rate of 1: the identity
    assert np.array_equal(patch_dropout_forward(z, 0.5, None, False)[0], z)     # evaluation sees every token


def test_the_model_with_patch_dropout_has_right_gradients_in_training():
    cfg = mv.ViTConfig.preset("test", patch_dropout=0.5, pool="gap")
    params = {k: v.astype(np.float64) + 0.1 * randn(*v.shape) for k, v in mv.init_params(cfg, seed=2).items()}
    x, y = randn(3, 3, 8, 8), np.array([0, 3, 1])
    loss = lambda: float(mv.cross_entropy(mv.forward(params, x, cfg, True, np.random.default_rng(5))[0], y)[0])
    logits, cache = mv.forward(params, x, cfg, True, np.random.default_rng(5))
    assert cache.encoder.patch_drop[0].shape == (3, 2)                          # 2 of 4 patch tokens kept
    grads = mv.backward(mv.cross_entropy(logits, y)[1], cache)
    check_grads(loss, params, grads)
    with pytest.raises(mv.ConfigError, match="patch_dropout"):
        mv.ViTConfig.preset("test", patch_dropout=0.5, pos_embed="relative")

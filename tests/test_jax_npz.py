"""The official .npz layout: read, written back, and run against a PyTorch model built on that layout."""
import numpy as np
import pytest

import minivit as mv
from minivit.io.checkpoint import CheckpointError
from minivit.io.jax_npz import load_jax_npz, save_jax_npz

P, C, D, H, M, K, L, G = 4, 3, 8, 2, 16, 5, 2, 2   # patch, channels, width, heads, MLP, classes, depth, grid
d = D // H


def official_arrays(seed=0):
    """Random weights under the official keys and shapes (google-research/vision_transformer)."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s) * 0.3
    a = {"embedding/kernel": r(P, P, C, D), "embedding/bias": r(D), "cls": r(1, 1, D),
         "Transformer/posembed_input/pos_embedding": r(1, G * G + 1, D),
         "Transformer/encoder_norm/scale": 1 + r(D), "Transformer/encoder_norm/bias": r(D),
         "head/kernel": r(D, K), "head/bias": r(K)}
    for i in range(L):
        b = f"Transformer/encoderblock_{i}/"
        for n in (0, 2):
            a[b + f"LayerNorm_{n}/scale"], a[b + f"LayerNorm_{n}/bias"] = 1 + r(D), r(D)
        for part in ("query", "key", "value"):
            a[b + f"MultiHeadDotProductAttention_1/{part}/kernel"] = r(D, H, d)
            a[b + f"MultiHeadDotProductAttention_1/{part}/bias"] = r(H, d)
        a[b + "MultiHeadDotProductAttention_1/out/kernel"] = r(H, d, D)
        a[b + "MultiHeadDotProductAttention_1/out/bias"] = r(D)
        a[b + "MlpBlock_3/Dense_0/kernel"], a[b + "MlpBlock_3/Dense_0/bias"] = r(D, M), r(M)
        a[b + "MlpBlock_3/Dense_1/kernel"], a[b + "MlpBlock_3/Dense_1/bias"] = r(M, D), r(D)
    return a


def torch_on_official_layout(a, x):
    """The ViT written directly on the official arrays: Flax's HWIO convolution and per-head q, k, v."""
    import torch
    import torch.nn.functional as F
    T = lambda k: torch.from_numpy(a[k])
    z = F.conv2d(torch.from_numpy(x), T("embedding/kernel").permute(3, 2, 0, 1), T("embedding/bias"), stride=P)
    z = z.flatten(2).transpose(1, 2)                                              # (B, N, D)
    z = torch.cat([T("cls").expand(len(x), -1, -1), z], 1) + T("Transformer/posembed_input/pos_embedding")
    for i in range(L):
        b = f"Transformer/encoderblock_{i}/"
        att = b + "MultiHeadDotProductAttention_1/"
        h = F.layer_norm(z, (D,), T(b + "LayerNorm_0/scale"), T(b + "LayerNorm_0/bias"), 1e-6)
        q, k, v = (torch.einsum("bnc,chk->bhnk", h, T(att + p + "/kernel")) + T(att + p + "/bias")[None, :, None]
                   for p in ("query", "key", "value"))
        o = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1) @ v               # (B, H, N, d)
        z = z + torch.einsum("bhnk,hkc->bnc", o, T(att + "out/kernel")) + T(att + "out/bias")
        h = F.layer_norm(z, (D,), T(b + "LayerNorm_2/scale"), T(b + "LayerNorm_2/bias"), 1e-6)
        h = F.gelu(h @ T(b + "MlpBlock_3/Dense_0/kernel") + T(b + "MlpBlock_3/Dense_0/bias"))
        z = z + h @ T(b + "MlpBlock_3/Dense_1/kernel") + T(b + "MlpBlock_3/Dense_1/bias")
    z = F.layer_norm(z, (D,), T("Transformer/encoder_norm/scale"), T("Transformer/encoder_norm/bias"), 1e-6)
    return (z[:, 0] @ T("head/kernel") + T("head/bias")).numpy()


def test_load_infers_the_config_and_matches_pytorch_on_the_official_layout(tmp_path):
    pytest.importorskip("torch")
    a = official_arrays()
    np.savez(tmp_path / "vit.npz", **a, **{"pre_logits/kernel": np.zeros((D, D)), "pre_logits/bias": np.zeros(D)})
    said = []
    params, cfg = load_jax_npz(tmp_path / "vit.npz", log=said.append)
    assert (cfg.image_size, cfg.patch_size, cfg.dim, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.num_classes) == \
        (G * P, P, D, L, H, M, K)
    assert "dropped pre_logits/bias, pre_logits/kernel" in said[0]
    x = np.random.default_rng(1).standard_normal((3, C, G * P, G * P))
    ours = mv.forward(params, x, cfg)[0]
    theirs = torch_on_official_layout(a, x)
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-10


def test_save_then_load_is_the_identity(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=4, dtype="float64")
    params = {k: v + np.random.default_rng(5).standard_normal(v.shape) * 0.1 for k, v in params.items()}
    save_jax_npz(tmp_path / "m.npz", params, cfg)
    back, cfg2 = load_jax_npz(tmp_path / "m.npz")
    assert cfg2 == cfg
    assert all(np.array_equal(back[k], params[k]) for k in params)
    a = official_arrays()
    np.savez(tmp_path / "o.npz", **a)
    p, c = load_jax_npz(tmp_path / "o.npz")
    save_jax_npz(tmp_path / "o2.npz", p, c)
    with np.load(tmp_path / "o2.npz") as z:
        assert set(z.files) == set(a) and all(np.array_equal(z[k], a[k]) for k in a)  # byte for byte the same arrays


def test_what_cannot_be_represented_is_named(tmp_path):
    a = official_arrays()
    np.savez(tmp_path / "extra.npz", **a, **{"Transformer/encoderblock_0/LayerScale_0/scale": np.ones(D)})
    with pytest.raises(CheckpointError, match="cannot represent: Transformer/encoderblock_0/LayerScale_0/scale"):
        load_jax_npz(tmp_path / "extra.npz")
    np.savez(tmp_path / "gap.npz", **{k: v for k, v in a.items() if k != "cls"})
    with pytest.raises(CheckpointError, match="no 'cls'"):
        load_jax_npz(tmp_path / "gap.npz")
    with pytest.raises(ValueError, match="pos_embed='sincos'"):
        save_jax_npz(tmp_path / "x.npz", {}, mv.ViTConfig.preset("test", pos_embed="sincos"))

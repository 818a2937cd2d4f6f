"""Conversion to and from timm's VisionTransformer state_dict layout."""
import numpy as np
import pytest

import minivit as mv


def test_round_trip_and_keys():
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=3, dtype="float64")
    sd = mv.to_timm(params, cfg)
    D = cfg.dim
    assert sd["patch_embed.proj.weight"].shape == (D, 3, 4, 4)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * D, D)
    assert sd["blocks.1.mlp.fc1.weight"].shape == (cfg.mlp_dim, D)
    assert sd["head.weight"].shape == (cfg.num_classes, D)
    assert sd["pos_embed"].shape == (1, cfg.num_patches + 1, D)
    assert {"cls_token", "norm.weight", "norm.bias", "blocks.1.norm2.bias"} <= set(sd)
    assert len(sd) == len(params)
    np.testing.assert_array_equal(sd["blocks.0.attn.proj.weight"], params["blocks.0.attn.proj.w"].T)
    back = mv.from_timm(sd, cfg)
    assert all(back[k].dtype == np.float64 and np.array_equal(back[k], params[k]) for k in params)


def test_from_timm_errors_name_the_key():
    cfg = mv.ViTConfig.preset("test")
    sd = mv.to_timm(mv.init_params(cfg), cfg)
    del sd["norm.bias"]
    with pytest.raises(KeyError, match="norm.bias"):
        mv.from_timm(sd, cfg)
    sd = mv.to_timm(mv.init_params(cfg), cfg)
    sd["head.weight"] = np.zeros((7, cfg.dim))
    with pytest.raises(ValueError, match=r"'head.weight' has shape \(7, 8\)"):
        mv.from_timm(sd, cfg)


def test_from_timm_refuses_weights_it_would_ignore():
    cfg = mv.ViTConfig.preset("test")
    sd = mv.to_timm(mv.init_params(cfg), cfg)
    sd["blocks.0.ls1.gamma"] = np.ones(cfg.dim, np.float32)      # LayerScale
    sd["reg_token"] = np.zeros((1, 4, cfg.dim), np.float32)      # register tokens
    with pytest.raises(ValueError, match="does not use: blocks.0.ls1.gamma, reg_token"):
        mv.from_timm(sd, cfg)


def test_from_timm_hints_at_wrappers():
    cfg = mv.ViTConfig.preset("test")
    sd = mv.to_timm(mv.init_params(cfg), cfg)
    with pytest.raises(ValueError, match=r"pass state_dict\['model'\]"):
        mv.from_timm({"model": sd, "epoch": 3}, cfg)
    with pytest.raises(ValueError, match="starts with 'module.'"):
        mv.from_timm({"module." + k: v for k, v in sd.items()}, cfg)
    sd["norm.weight"] = sd["norm.weight"].astype(np.int64)
    with pytest.raises(ValueError, match="'norm.weight' has dtype int64"):
        mv.from_timm(sd, cfg)


def test_from_timm_sincos_table_is_checked():
    cfg = mv.ViTConfig.preset("test", pos_embed="sincos")
    sd = mv.to_timm(mv.init_params(cfg), cfg)
    assert set(mv.from_timm(sd, cfg)) == set(mv.param_shapes(cfg))   # the fixed table is accepted
    sd["pos_embed"] = sd["pos_embed"] + 0.01
    with pytest.raises(ValueError, match="not the fixed sin-cos table"):
        mv.from_timm(sd, cfg)


def test_from_timm_takes_torch_and_bfloat16_tensors():
    torch = pytest.importorskip("torch")
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=2)
    sd = {k: torch.from_numpy(v) for k, v in mv.to_timm(params, cfg).items()}
    back = mv.from_timm(sd, cfg)
    assert all(np.array_equal(back[k], params[k]) for k in params)
    bf = mv.from_timm({k: v.to(torch.bfloat16) for k, v in sd.items()}, cfg)
    assert bf["head.b"].dtype == np.float32
    assert all(np.allclose(bf[k], params[k], rtol=1e-2, atol=1e-2) for k in params)  # bfloat16 keeps 8 bits

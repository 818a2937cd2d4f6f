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

"""Bad input gets a clear error that names the problem."""
import numpy as np
import pytest

import minivit as mv


def test_image_size_not_divisible_by_patch():
    with pytest.raises(mv.ConfigError, match="image_size 30 is not divisible by patch_size 4"):
        mv.ViTConfig(image_size=30, patch_size=4)


def test_dim_not_divisible_by_heads():
    with pytest.raises(mv.ConfigError, match="dim 100 is not divisible by heads 3"):
        mv.ViTConfig(dim=100, heads=3)


@pytest.mark.parametrize("field,value,msg", [
    ("pool", "max", "pool must be"), ("gelu", "relu", "gelu must be"), ("pos_embed", "2d", "pos_embed must be"),
    ("dropout", 1.0, "dropout must be in"), ("depth", 0, "depth must be a positive integer"),
])
def test_bad_config_fields(field, value, msg):
    with pytest.raises(mv.ConfigError, match=msg):
        mv.ViTConfig(**{field: value})


def test_unknown_preset():
    with pytest.raises(mv.ConfigError, match="unknown preset 'vit-z99'.*vit-b16"):
        mv.ViTConfig.preset("vit-z99")


def test_preset_names_are_forgiving():
    assert mv.ViTConfig.preset("ViT-B/16") == mv.ViTConfig.preset("vit-b16")


@pytest.fixture
def model():
    cfg = mv.ViTConfig.preset("test")
    return cfg, mv.init_params(cfg)


def test_wrong_channel_count(model):
    cfg, params = model
    with pytest.raises(ValueError, match="input has 1 channels, the model expects 3"):
        mv.forward(params, np.zeros((2, 1, 8, 8), np.float32), cfg)


def test_wrong_image_size(model):
    cfg, params = model
    with pytest.raises(ValueError, match="input images are 16x16, the model expects 8x8"):
        mv.forward(params, np.zeros((2, 3, 16, 16), np.float32), cfg)


def test_wrong_rank(model):
    cfg, params = model
    with pytest.raises(ValueError, match=r"input must be a 4-D batch \(B, C, H, W\)"):
        mv.forward(params, np.zeros((3, 8, 8), np.float32), cfg)


def test_integer_images(model):
    cfg, params = model
    with pytest.raises(ValueError, match="floating-point"):
        mv.forward(params, np.zeros((1, 3, 8, 8), np.uint8), cfg)


@pytest.mark.parametrize("labels,msg", [
    (np.array([0, 5]), r"labels out of range: must be in \[0, 5\), got min 0, max 5"),
    (np.array([-1, 2]), r"labels out of range"),
    (np.array([0, 1, 2]), r"labels must have shape \(2,\)"),
    (np.array([0.0, 1.0]), r"labels must be integers"),
])
def test_bad_labels(labels, msg):
    with pytest.raises(ValueError, match=msg):
        mv.cross_entropy(np.zeros((2, 5)), labels)


def test_unknown_backend():
    with pytest.raises(mv.BackendError, match="unknown backend 'jax'"):
        mv.use_backend("jax")


def test_dropout_without_rng(model):
    cfg = mv.ViTConfig.preset("test", dropout=0.1)
    with pytest.raises(ValueError, match="explicit rng"):
        mv.forward(mv.init_params(cfg), np.zeros((1, 3, 8, 8), np.float32), cfg, train=True)

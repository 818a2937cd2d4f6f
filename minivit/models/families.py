"""The model families the trainer and checkpoints know: the ViT, and the small CNN it is compared with.

A family is the four functions the trainer needs from a model, chosen by the config's type:
    init_params(cfg, seed) -> params, forward(params, x, cfg, train, rng, keep_cache) -> (logits, cache),
    backward(dlogits, cache) -> grads, param_shapes(cfg) -> {name: shape}.
"""
from collections import namedtuple

from . import cnn, vit as model
from .init import init_params as vit_init_params
from .cnn import CNNConfig
from ..config import ConfigError, ViTConfig

Family = namedtuple("Family", "name config init_params forward backward param_shapes")

FAMILIES = {
    "vit": Family("vit", ViTConfig, vit_init_params, model.forward, model.backward, model.param_shapes),
    "cnn": Family("cnn", CNNConfig, cnn.init_params, cnn.forward, cnn.backward, cnn.param_shapes),
}


def family_of(cfg):
    """The Family of a model config (a ViTConfig or a CNNConfig)."""
    for fam in FAMILIES.values():
        if isinstance(cfg, fam.config):
            return fam
    raise TypeError(f"not a model config: {type(cfg).__name__} (expected ViTConfig or CNNConfig)")


def config_from_dict(d):
    """A config from its to_dict(): a CNN's carries family 'cnn'; a ViT's has no family key."""
    if not isinstance(d, dict):
        raise ConfigError(f"a model config is a mapping of fields to values, got {type(d).__name__}")
    name = d.get("family", "vit")
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name].config.from_dict(d)

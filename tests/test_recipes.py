"""The recipes of benchmarks/recipe_sweep.py name real options: each builds a valid model and
training configuration (a misspelt key or a bad value would otherwise surface only minutes into a
sweep)."""
import os
import sys

import pytest

from minivit import ViTConfig
from minivit.train import TrainConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import recipe_sweep  # noqa: E402


@pytest.mark.parametrize("name", list(recipe_sweep.RECIPES))
def test_recipe_builds_valid_configs(name):
    preset, model_kw, train_kw = recipe_sweep.RECIPES[name]
    cfg = ViTConfig.preset(preset, num_classes=10, **model_kw)
    tcfg = TrainConfig(epochs=2, **{**recipe_sweep.BASE, **train_kw})
    for key, value in model_kw.items():
        assert getattr(cfg, key) == value
    for key, value in {**recipe_sweep.BASE, **train_kw}.items():
        assert getattr(tcfg, key) == value


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



# ---------------------------------------------------------------- `minivit train --recipe NAME`

import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402

from minivit.cli.parser import _parser, model_choice, train_config  # noqa: E402
from minivit.config import RECIPES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _documented_hour():
    """The hour's command as docs/results.md prints it under 'The hour', parsed by the CLI's own parser."""
    text = (ROOT / "docs" / "results.md").read_text()
    block = re.search(r"\*\*The hour\.\*\*.*?```bash\n(.*?)```", text, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))
    return argv[argv.index("train"):]


# The flags that take --recipe hour back to the fifth attempt's recipe, before the half hour's three changes
FIFTH = ["--pool", "token", "--patch-init", "", "--tta", ""]


def test_the_fifth_hour_is_the_recipe_without_its_three_changes():
    """--recipe hour with FIFTH sets what the fifth attempt's 20-flag command in docs/results.md sets, but the run's
    own choices: where the data is and the run goes, the seed, and the threads (one per rank under mpiexec -n 2)."""
    documented = _parser().parse_args(_documented_hour())
    recipe = _parser().parse_args(["train", "--data", documented.data, "--recipe", "hour", *FIFTH])
    built = [ViTConfig.preset(preset, num_classes=10, **kw) for preset, kw in (model_choice(recipe), model_choice(documented))]
    assert built[0] == built[1]     # the same model (the recipe names --pool token, the class token, which the command left as default)
    assert asdict(train_config(recipe)) == {**asdict(train_config(documented)), "recipe": "hour", "threads": 2}


def _recorded(stem):
    """The model and training settings a finished run recorded in its config.json (benchmarks/results/)."""
    return json.loads((ROOT / "benchmarks" / "results" / f"{stem}_config.json").read_text())


@pytest.mark.parametrize("recipe, flags, stems", [
    ("hour", [], ["cifar10_hour_gap_whiten_tta_s0", "cifar10_hour_gap_whiten_tta_s1"]),
    ("half-hour", [], ["cifar10_half_hour_tta_s2", "cifar10_half_hour_tta_s3"]),
    ("half-hour", ["--tta", ""], ["cifar10_half_hour_gap_whiten_s0", "cifar10_half_hour_gap_whiten_s1"]),  # the second version
    ("hour", ["--time-budget", "30", *FIFTH], ["cifar10_half_hour_s0", "cifar10_half_hour_s1"]),   # the first version
])
def test_a_recipe_sets_what_its_documented_runs_trained_with(recipe, flags, stems):
    """docs/results.md's hour and half-hour figures come from runs whose config.json the recipe must reproduce: the same
    model and the same training settings, but the run's own seed, threads and recorded recipe name."""
    a = _parser().parse_args(["train", "--recipe", recipe, *flags])
    preset, model_kw = model_choice(a)
    own = ("seed", "threads", "recipe")
    for stem in stems:
        run = _recorded(stem)
        assert ViTConfig.preset(preset, num_classes=10, **model_kw) == ViTConfig.from_dict(run["model"])
        mine = {k: v for k, v in asdict(train_config(a)).items() if k not in own}
        assert mine == {k: v for k, v in {**asdict(TrainConfig()), **run["train"]}.items() if k not in own}


def test_flags_beside_a_recipe_override_single_settings():
    a = _parser().parse_args(["train", "--recipe", "hour", "--lr", "1e-3", "--batch-size", "128", "--no-augment",
                              "--preset", "cifar-small", "--drop-path", "0.2"])
    hour = RECIPES["hour"]
    expected = replace(TrainConfig(**hour.train, recipe="hour"), lr=1e-3, batch_size=128, augment=False)
    assert train_config(a) == expected       # 1e-3 and 128 are train's own defaults: given, they still win
    assert model_choice(a) == ("cifar-small", {**hour.model, "drop_path": 0.2})
    assert train_config(_parser().parse_args(["train", "--recipe", "half-hour"])).time_budget == 30


def test_under_mpiexec_a_recipe_runs_one_thread_per_rank(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    assert train_config(_parser().parse_args(["train", "--recipe", "hour"])).threads == 1
    assert train_config(_parser().parse_args(["train", "--recipe", "hour", "--threads", "2"])).threads == 2


def test_help_lists_every_recipe_on_one_line():
    text = subprocess.run([sys.executable, "-m", "minivit", "train", "--help"], capture_output=True, text=True).stdout
    for name, recipe in RECIPES.items():
        assert f"  {name}" in text and recipe.summary in text


def test_the_recipe_is_recorded_in_the_checkpoint_and_config_json(tmp_path):
    from datagen import image_folder_files, write_folder
    from minivit.io.checkpoint import load_checkpoint
    data = write_folder(tmp_path / "data", image_folder_files(classes=tuple("abcde"), size=8, per_class=(6, 2)))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "minivit", "train", "--data", str(data), "--recipe", "hour", "--preset",
                        "test", "--val-split", "5", "--time-budget", "0.002", "--batch-size", "8", "--resize-schedule",
                        "", "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "MINIVIT_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "recipe: hour; model: test, attn_init=mimetic" in r.stdout
    meta = load_checkpoint(out / "checkpoint.npz")[3]
    assert meta["train_config"]["recipe"] == "hour" and meta["train_config"]["lr"] == RECIPES["hour"].train["lr"]
    assert json.loads((out / "config.json").read_text())["train"]["recipe"] == "hour"
    assert load_checkpoint(out / "checkpoint.npz")[1].layer_scale == RECIPES["hour"].model["layer_scale"]

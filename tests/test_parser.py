"""The command line's flags come from the config dataclasses: each setting, its help and its allowed values once."""
import argparse
import re
from dataclasses import asdict, fields

import pytest

from minivit.cli.parser import FINETUNE_DEFAULTS, MODEL_FLAGS, _parser, train_config
from minivit.config import POS_EMBEDS, TrainConfig, ViTConfig

COMMANDS = ["train", "pretrain", "finetune", "evaluate", "predict", "profile", "fewshot", "export", "make-subset"]


def _subparser(name):
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_and_argument_has_one_help_line_with_at_most_one_default(command):
    for action in _subparser(command)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = action.help or ""
        assert text.strip(), f"{command} {action.option_strings or action.dest}: no help"
        assert text.count("default") <= 1, f"{command} {action.option_strings}: two defaults in {text!r}"
        assert "%(default)" not in text and "None" not in text, text
        help_text = _subparser(command).format_help()
        assert "(default: None)" not in help_text


def test_training_flags_are_the_train_config_fields_with_its_defaults():
    for command, defaults in (("train", TrainConfig()), ("pretrain", TrainConfig(label_smoothing=0.0)),
                              ("finetune", FINETUNE_DEFAULTS)):
        args = ["finetune", "ckpt.npz"] if command == "finetune" else [command]
        a = _parser().parse_args(args)
        assert train_config(a) == defaults, command
    assert FINETUNE_DEFAULTS.optimizer == "sgd" and FINETUNE_DEFAULTS.weight_decay == 0.0
    a = _parser().parse_args(["train", "--warmup", "0.5", "--no-augment", "--optimizer", "sgd", "--lr", "0.1"])
    assert asdict(train_config(a)) == asdict(TrainConfig(warmup_epochs=0.5, augment=False, optimizer="sgd", lr=0.1))


def test_model_flags_are_the_config_fields_made_with_setting():
    assert set(MODEL_FLAGS) == {f.name for f in fields(ViTConfig) if f.metadata}
    assert {"in_channels", "head", "stem_channels"}.isdisjoint(MODEL_FLAGS)
    pos = next(a for a in _subparser("train")._actions if "--pos-embed" in a.option_strings)
    assert tuple(pos.choices) == POS_EMBEDS and "relative" in pos.choices   # the allowed values, from config.py
    a = _parser().parse_args(["train", "--pos-embed", "relative", "--pos-embed-every-layer"])
    assert a.pos_embed == "relative" and a.pos_embed_every_layer is True and a.dim is None


def test_a_value_outside_the_allowed_ones_is_refused(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--optimizer", "adam"])
    assert re.search(r"invalid choice: 'adam'", capsys.readouterr().err)

"""The command line: `minivit train | pretrain | finetune | evaluate | predict | fewshot | profile | export | make-subset`."""
from .commands import main  # noqa: F401

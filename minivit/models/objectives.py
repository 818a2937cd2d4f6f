"""What a run minimises and reports, chosen once from the model's head: an objective is a module of plain
functions (models/classify.py lists the questions they answer), so the trainer and the engine never ask
which head a model has.

    classification            ViTConfig.head = "classify", and every CNN: labels, cross-entropy, accuracy
    masked patch prediction   ViTConfig.head = "mpp": pre-training on the patches' colours (paper B.1.2)
"""
from . import classify, mpp

OBJECTIVES = {classify.NAME: classify, mpp.NAME: mpp}


def objective_of(cfg):
    """The objective a model config trains for: by ViTConfig.head (a CNNConfig's is 'classify')."""
    return OBJECTIVES[cfg.head]

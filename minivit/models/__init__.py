"""The models built from the layers: the ViT (vit.py, its blocks, init and heads), masked patch
prediction, the comparison CNN, and the families registry the trainer and checkpoints use."""
from .families import FAMILIES, Family, config_from_dict, family_of  # noqa: F401
from . import block, cnn, init, mpp, resolution, vit  # noqa: F401,E402

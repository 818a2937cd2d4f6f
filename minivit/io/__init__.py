"""Weights and runs on disk: minivit checkpoints, timm's state_dict layout, the official .npz, the run lock."""
from . import checkpoint  # noqa: F401,E402

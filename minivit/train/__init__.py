"""Training: the data-parallel engine, the trainer's loop, the optimisers, batches and plots."""
from ..config import TrainConfig  # noqa: F401
from .batches import epoch_order, make_batch  # noqa: F401
from .engine import Engine, evaluate  # noqa: F401
from .trainer import Trainer, TrainingDiverged  # noqa: F401
from . import mallopt, optim, plots  # noqa: F401,E402

"""Training: the data-parallel engine, the trainer's loop, the optimisers, batches and plots."""
from .trainer import (Engine, TrainConfig, Trainer, TrainingDiverged, epoch_order, evaluate,  # noqa: F401
                      make_batch)

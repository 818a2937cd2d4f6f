"""A training run for tests/test_distributed.py, the same in one process or under `mpiexec -n N`:
the `test` preset on toy images, with RandAugment, crops and flips, random erasing, MixUp/CutMix,
dropout, drop path and PatchDropout on so that every random stream is drawn, in float32 or float64. Rank 0 writes the run folder; the parameters are in its
checkpoint.

    python tests/mpi_driver.py OUT [--epochs E] [--threads T] [--batch-size B] [--float64] [--resume]
                                   [--crash-after-first-epoch] [--rank-1-fails-to-start]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from helpers import toy_dataset  # noqa: E402
from minivit import ViTConfig, init_params  # noqa: E402
from minivit.config import TrainConfig  # noqa: E402
from minivit.train import Trainer  # noqa: E402
from minivit.train.distributed import current_world  # noqa: E402


class Crash(Exception):
    """Raised after the first epoch's checkpoint is written (on rank 0): a rank that fails."""


def crash(history):
    raise Crash("a failure injected after the first epoch")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--crash-after-first-epoch", action="store_true")
    ap.add_argument("--rank-1-fails-to-start", action="store_true")
    a = ap.parse_args()
    cfg = ViTConfig.preset("test", dropout=0.1, drop_path=0.1, patch_dropout=0.25, num_classes=5)
    tcfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=3e-3, warmup_epochs=0.5, seed=5, threads=a.threads,
                       ema=0.9, clip_norm=1.0, eval_batch_size=4,   # 14 test images: 4 batches, shared by the ranks
                       randaugment=1, random_erasing=0.5, mixup=0.8, cutmix=1.0)   # every stream of the batch
    init = init_params(cfg, seed=tcfg.seed)
    if a.float64:
        init = {k: v.astype("float64") for k, v in init.items()}
    if a.rank_1_fails_to_start and current_world().rank == 1:   # Trainer() raises there, while rank 0 waits in a sum
        tcfg = TrainConfig(**{**tcfg.__dict__, "val_split": 10_000})
    trainer = Trainer(cfg, tcfg, toy_dataset(n_train=36, n_test=14), a.out, resume=a.resume, progress=False,
                      plots=False, init=init, on_epoch_end=crash if a.crash_after_first_epoch else None)
    trainer.fit()
    ev = trainer._evaluate(trainer.params, trainer.data.test)   # the test set's predictions, gathered on rank 0
    if trainer.world.is_root:
        np.save(os.path.join(a.out, "predictions.npy"), ev["predictions"])


if __name__ == "__main__":
    main()

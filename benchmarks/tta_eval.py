"""Test-time augmentation measured on a finished run's validation images: the run's checkpoint scored on the
images it held out (--val-split) with each --tta (none, flip, flip-shift), and how long each reading took.
The test set is not read: a run reads it once, at its end, and a choice between these is made on validation.

    python benchmarks/tta_eval.py runs/half-hour-s0/checkpoint.npz --out benchmarks/results/cifar10_half_hour_s0_tta.json

The data is the run's own (the checkpoint records it); give --data where it has moved.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from minivit.config import TTAS, TrainConfig
from minivit.data.datasets import load_dataset
from minivit.data.splits import hold_out
from minivit.io.checkpoint import load_checkpoint
from minivit.machine import machine
from minivit.train.engine import Engine, evaluate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint.npz of a run trained with --val-split")
    p.add_argument("--data", default=None, help="the run's data, where it is now (default: the path it records)")
    p.add_argument("--threads", type=int, default=2, help="evaluation threads (default: 2)")
    p.add_argument("--out", help="also write the figures and the machine to this JSON file")
    a = p.parse_args()
    params, cfg, _, meta = load_checkpoint(a.checkpoint, require=("train_config", "mean", "std", "data"))
    tcfg = TrainConfig(**meta["train_config"])
    if not tcfg.val_split:
        sys.exit(f"{a.checkpoint}: the run held out no validation images (--val-split); nothing to choose on")
    data = load_dataset(a.data or meta["data"])
    _, val = hold_out(data.train, tcfg.val_split)     # the images the run held out: the same for every run
    mean, std = np.array(meta["mean"]), np.array(meta["std"])
    engine = Engine(cfg, a.threads)
    readings = []
    for tta in TTAS:
        t0 = time.perf_counter()
        ev = evaluate(params, cfg, val, mean, std, tcfg.eval_batch_size, engine=engine, tta=tta)
        seconds = time.perf_counter() - t0
        readings.append({"tta": tta or "none", "val_acc": ev["accuracy"], "val_loss": ev["loss"], "seconds": seconds})
        print(f"{tta or 'none':>10}: validation accuracy {ev['accuracy']:.4f}, loss {ev['loss']:.4f}, "
              f"{seconds:.1f} s for {len(val.labels):,} images")
    engine.close()
    if a.out:
        record = {"checkpoint": str(a.checkpoint), "recipe": tcfg.recipe, "step": meta["step"],
                  "val_images": len(val.labels), "readings": readings, "machine": machine()}
        Path(a.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

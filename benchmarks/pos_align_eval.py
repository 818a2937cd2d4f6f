"""Where the resampled position table's rows sit, measured: a finished run's checkpoint read on its validation
images at each smaller size of its --resize-schedule, with the learned 8 x 8 table resampled to the smaller grid
in two ways:

- corners: bilinear with the grid's corners aligned (the table's first and last rows kept), what progressive
  resizing does inside every step (layers/resample.resample_table_forward);
- centres: bilinear with the patch centres aligned, x = (i + 0.5) G / g - 0.5, as the images themselves are
  resized (resize_batch's bicubic places its samples so): at 16 pixels each row of the 4 x 4 table is then the
  mean of the 2 x 2 rows whose patches cover the same pixels.

The test set is not read.

    python benchmarks/pos_align_eval.py runs/half-hour-s0/checkpoint.npz runs/half-hour-s1/checkpoint.npz \\
        --out benchmarks/results/pos_align_eval.json
"""
import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from minivit.config import TrainConfig, resize_stages
from minivit.data.datasets import load_dataset
from minivit.data.splits import hold_out
from minivit.data.transforms import normalize
from minivit.io.checkpoint import load_checkpoint
from minivit.layers.resample import bilinear_matrix, resize_batch
from minivit.machine import machine
from minivit.models.vit import forward


def table_at(table, g, align_corners):
    """The learned table (1, G*G + 1, D) resampled to grid g, the class token's row kept."""
    G, D = int(round((table.shape[1] - 1) ** 0.5)), table.shape[2]
    R = bilinear_matrix(g, G, align_corners=align_corners).astype(table.dtype)
    small = np.einsum("ij,jkd,lk->ild", R, table[0, 1:].reshape(G, G, D), R)
    return np.concatenate([table[:, :1], small.reshape(1, g * g, D)], axis=1)


def accuracy(params, cfg, images, labels, mean, std, size, batch=500):
    correct = 0
    for i in range(0, len(labels), batch):
        x = resize_batch(normalize(images[i:i + batch], mean, std), size)
        logits, _ = forward(params, x, cfg, keep_cache=False)
        correct += int((logits.argmax(axis=1) == labels[i:i + batch]).sum())
    return correct / len(labels)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint.npz files of runs trained with --val-split and "
                                                 "--resize-schedule, on the same data")
    p.add_argument("--data", default=None, help="the runs' data, where it is now (default: the path recorded)")
    p.add_argument("--out", help="also write the figures and the machine to this JSON file")
    a = p.parse_args()
    runs, data = [], None
    for path in a.checkpoints:
        params, cfg, _, meta = load_checkpoint(path, require=("train_config", "mean", "std", "data"))
        tcfg = TrainConfig(**meta["train_config"])
        if not tcfg.val_split or not tcfg.resize_schedule or cfg.pos_embed != "learned":
            sys.exit(f"{path}: needs a run with --val-split, --resize-schedule and a learned position table")
        data = data or load_dataset(a.data or meta["data"])
        _, val = hold_out(data.train, tcfg.val_split)
        mean, std = np.array(meta["mean"]), np.array(meta["std"])
        readings = []
        for size in [s for s, _ in resize_stages(tcfg.resize_schedule)] + [cfg.image_size]:
            small = replace(cfg, image_size=size)
            row = {"size": size}
            for name, corners in (("corners", True), ("centres", False)):
                at = {**params, "pos_embed": table_at(params["pos_embed"], small.grid, corners)}
                row[name] = accuracy(at, small, val.images, val.labels, mean, std, size)
            print(f"{path}: {size} px: corners {row['corners']:.4f}, centres {row['centres']:.4f}")
            readings.append(row)
        runs.append({"checkpoint": str(path), "recipe": tcfg.recipe, "seed": tcfg.seed,
                     "resize_schedule": tcfg.resize_schedule, "val_images": len(val.labels), "readings": readings})
    if a.out:
        Path(a.out).write_text(json.dumps({"runs": runs, "machine": machine()}, indent=2) + "\n")


if __name__ == "__main__":
    main()

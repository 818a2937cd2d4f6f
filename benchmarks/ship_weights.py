"""A run's checkpoint as a notebook asset: the weights, the config and the run's record (history, normalisation,
training settings, classes), without the optimiser's state (two more copies of every weight), and with the
command that trained it.

    python benchmarks/ship_weights.py runs/half-hour-gap-whiten-s0/checkpoint.npz notebooks/assets/vit-cifar10-half-hour.npz \\
        --command "mpiexec -n 2 minivit train --data ../shared/datasets/cifar10-jpeg.tar.gz --recipe half-hour --seed 0"
"""
import argparse

from minivit.io.checkpoint import load_checkpoint, save_checkpoint


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a run's checkpoint.npz")
    p.add_argument("out", help="the asset to write")
    p.add_argument("--command", required=True, help="the command that trained it, kept in the asset's metadata")
    a = p.parse_args()
    params, cfg, _, meta = load_checkpoint(a.checkpoint)
    keep = ("classes", "mean", "std", "history", "train_config", "seed", "step", "epoch", "elapsed", "data")
    save_checkpoint(a.out, params, cfg, None, {**{k: meta[k] for k in keep if k in meta}, "command": a.command,
                                               "note": f"weights of {a.checkpoint}; its optimiser state dropped"})


if __name__ == "__main__":
    main()

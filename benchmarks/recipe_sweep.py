"""Short runs of several training recipes on CIFAR-10, tabulated by accuracy and time, so that a long
run is spent on the best candidate.

    python benchmarks/recipe_sweep.py --data ../shared/datasets/cifar10-jpeg.tar.gz --epochs 2 \\
        --out runs/recipe-sweep
    cp runs/recipe-sweep/results.json benchmarks/results/recipe_sweep_cpu.json

Every recipe trains for `--epochs` full passes, or with `--minutes M` for the same M minutes of
training time (`--time-budget`: sweeps at equal time, which compare what each recipe does with the
machine's time rather than with a number of images); its learning-rate schedule runs to the end either
way, so a short run is a complete small run, not the start of a long one. With `--val-split N` (choose this way) the
recipes are ranked by their accuracy on N held-out training images, the same images for every recipe,
and the test set is read once per run, for the report; without it they are ranked on the test set,
as the sweeps in docs/results.md were, which is selection on the test set. The
table gives the accuracy, the minutes of training, the throughput, and the accuracy gained per
minute over chance (10%). Short runs favour recipes that learn fast; regularisers that pay off only
late (MixUp, CutMix, stochastic depth) look worse here than they will be in an hour: read the table
with that in mind. Runs are in their own folders under --out and resume; run the same command again
to finish an interrupted sweep. Run nothing else on the machine meanwhile: the minutes are compared.

Under `mpiexec -n 2 ... --threads 1` every recipe trains on two MPI ranks (docs/distributed.md): on
two cores, more images per second than one process with two threads. Rank 0 writes and prints.
"""
import os
import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minivit import ViTConfig, count_params  # noqa: E402
from minivit.machine import machine  # noqa: E402
from minivit.data import load_dataset  # noqa: E402
from minivit.atomic_files import write_text_atomic  # noqa: E402
from minivit.train import TrainConfig, Trainer  # noqa: E402
from minivit.train.distributed import current_world  # noqa: E402

BASE = dict(batch_size=256, lr=2e-3, warmup_epochs=0.5, weight_decay=0.05, label_smoothing=0.1)

HOUR_MODEL = {"attn_init": "mimetic", "layer_scale": 0.1, "drop_path": 0.1}
HOUR_TRAIN = {"lr": 3e-3}

# name: (preset, model overrides, training overrides on top of BASE)
RECIPES = {
    "tiny": ("cifar-tiny", {}, {}),
    "tiny-mimetic": ("cifar-tiny", {"attn_init": "mimetic"}, {}),
    "tiny-layerscale-droppath": ("cifar-tiny", {"layer_scale": 0.1, "drop_path": 0.1}, {}),
    "tiny-mixup-cutmix": ("cifar-tiny", {}, {"mixup": 0.8, "cutmix": 1.0}),
    "tiny-lr4e-3": ("cifar-tiny", {}, {"lr": 4e-3}),
    # the recipe of the hour runs (docs/results.md), and single changes to it that learn more per image
    "hour": ("cifar-tiny", HOUR_MODEL, HOUR_TRAIN),
    "hour-gap": ("cifar-tiny", {**HOUR_MODEL, "pool": "gap"}, HOUR_TRAIN),
    "hour-batch128": ("cifar-tiny", HOUR_MODEL, {**HOUR_TRAIN, "batch_size": 128, "lr": 2e-3}),
    # on a time budget: the decay to zero that "Budgeted training" (Li et al., 2020) recommends, and
    # PatchDropout (Liu et al., 2023), which trains on a quarter fewer tokens per image
    "hour-linear": ("cifar-tiny", HOUR_MODEL, {**HOUR_TRAIN, "schedule": "linear"}),
    "hour-linear-pd25": ("cifar-tiny", {**HOUR_MODEL, "patch_dropout": 0.25}, {**HOUR_TRAIN, "schedule": "linear"}),
    # progressive resizing: a quarter of the time on 16-pixel images (17 tokens), a quarter on 24 (37), then 32 (65)
    "hour-linear-res": ("cifar-tiny", HOUR_MODEL, {**HOUR_TRAIN, "schedule": "linear",
                                                   "resize_schedule": "16:0.25,24:0.5"}),
    "hour-linear-pd25-res": ("cifar-tiny", {**HOUR_MODEL, "patch_dropout": 0.25},
                             {**HOUR_TRAIN, "schedule": "linear", "resize_schedule": "16:0.25,24:0.5"}),
    "hybrid": ("cifar-hybrid", {}, {}),
    "hybrid-mimetic": ("cifar-hybrid", {"attn_init": "mimetic"}, {}),
    "small": ("cifar-small", {}, {}),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="data-parallel threads (per MPI rank)")
    p.add_argument("--warmup", type=float, default=BASE["warmup_epochs"], help="warmup epochs")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="train each recipe for this many minutes of training time instead of --epochs (default 0: epochs)")
    p.add_argument("--val-split", type=int, default=0,
                   help="rank the recipes on this many held-out training images (default 0: on the test set)")
    a = p.parse_args()
    world = current_world()
    if not world.is_root:
        sys.stdout = open(os.devnull, "w")
    data = load_dataset(a.data)
    K = len(data.classes)
    out = Path(a.out)
    results = {"command": " ".join(["python"] + sys.argv), "machine": machine(), "data": a.data, "epochs": a.epochs, "base": BASE,
               "ranks": world.size, "runs": []}
    for name in a.recipes:
        preset, model_kw, train_kw = RECIPES[name]
        cfg = ViTConfig.preset(preset, num_classes=K, **model_kw)
        tcfg = TrainConfig(epochs=a.epochs, seed=a.seed, val_split=a.val_split, time_budget=a.minutes,
                           threads=a.threads, **{**BASE, "warmup_epochs": a.warmup, **train_kw})
        tr = Trainer(cfg, tcfg, data, out / name, resume=True, progress=sys.stderr.isatty(), log=print, plots=False)
        tr.fit()
        if tr.interrupted:
            sys.exit(f"interrupted; run the same command again to continue from {out}")
        acc = tr.history[-1]["val_acc" if a.val_split else "test_acc"]     # what the recipes are ranked by
        minutes = tr.elapsed / 60
        row = {"recipe": name, "preset": preset, "model": model_kw, "train": train_kw, "parameters": count_params(cfg),
               "rank_acc": acc, "test_acc": tr.history[-1]["test_acc"], "minutes": minutes, "images_per_s": len(tr.data.train.labels) * tr.step / tr.steps_per_epoch / tr.elapsed,
               "points_per_minute": 100 * (acc - 1 / K) / minutes, "train_config": asdict(tcfg), "history": tr.history}
        results["runs"].append(row)
        if world.is_root:
            write_text_atomic(out / "results.json", json.dumps(results, indent=1))
        tr.engine.close()
    on = f"validation accuracy on {a.val_split} held-out images" if a.val_split else \
        f"test accuracy on {len(data.test.labels)} images (selection on the test set)"
    length = f"{a.minutes:g} minutes of training" if a.minutes else f"{a.epochs} epochs"
    print(f"\n{length} each, ranked by {on}")
    print(f"{'recipe':26s} {'params':>8s} {'rank acc':>9s} {'test acc':>9s} {'minutes':>8s} {'img/s':>6s} {'points/min':>10s}")
    for r in sorted(results["runs"], key=lambda r: -r["rank_acc"]):
        print(f"{r['recipe']:26s} {r['parameters']:8,d} {100 * r['rank_acc']:8.2f}% {100 * r['test_acc']:8.2f}% "
              f"{r['minutes']:8.1f} {r['images_per_s']:6.0f} {r['points_per_minute']:10.2f}")


if __name__ == "__main__":
    main()

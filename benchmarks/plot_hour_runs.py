"""Test accuracy (validation accuracy for a run with --val-split) against minutes of training for several
runs, from their metrics.jsonl files.

    python benchmarks/plot_hour_runs.py docs/img/cifar10-hour-runs.png \\
        "cifar-tiny (142k), 46 epochs=benchmarks/results/cifar10_tiny_hour_metrics.jsonl" \\
        "dim 96 (312k), 33 epochs=benchmarks/results/cifar10_dim96_hour_metrics.jsonl"

`--goal=85` draws the target accuracy at 85% instead of 80%.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the PNG to write")
    p.add_argument("runs", nargs="+", help="LABEL=PATH of a metrics.jsonl, one per run")
    p.add_argument("--goal", type=float, default=80.0, help="the target accuracy drawn as a dashed line (%%)")
    a = p.parse_args()
    bad = [run for run in a.runs if "=" not in run]
    if bad:
        p.error(f"each run is LABEL=PATH: {bad[0]!r} has no '='")
    goal, out, runs = a.goal, a.out, a.runs
    fig, ax = plt.subplots(figsize=(7, 4.2))
    longest, highest = 0.0, 0.0
    for run in runs:
        label, path = run.split("=", 1)
        rows = [json.loads(line) for line in open(path)]
        minutes = [r["elapsed_s"] / 60 for r in rows]
        longest = max(longest, minutes[-1])
        held = "val" if "val_acc" in rows[0] else "test"   # a run with --val-split reads the test set once, at the end
        held_acc, train_acc = ([100 * r[key] for r in rows] for key in (held + "_acc", "train_acc"))
        highest = max([highest] + held_acc + train_acc)
        ax.plot(minutes, held_acc, marker=".", label=f"{label} {'validation' if held == 'val' else 'test'}")
        ax.plot(minutes, train_acc, ls=":", color=ax.lines[-1].get_color(), label=label + " train (augmented)")
    ax.axhline(goal, color="grey", lw=0.8, ls="--")
    ax.axvline(30 if longest <= 31 else 60, color="grey", lw=0.8, ls="--")   # the deadline: a half hour or an hour
    ax.set(xlabel="minutes of training (2 CPU cores)", ylabel="accuracy (%)", ylim=(25, max(85, goal + 3, highest + 2)),
           title="CIFAR-10 from scratch: the target is the top-left of the dashed lines")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()

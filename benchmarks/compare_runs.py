"""Compare two training runs epoch by epoch from their metrics.jsonl files, and plot both.

    python benchmarks/compare_runs.py runs/cifar10-tiny-40ep/metrics.jsonl runs/torch-tiny-40ep/metrics.jsonl \\
        --labels minivit PyTorch --plot docs/img/minivit-vs-torch.png
"""
import argparse
import json


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--labels", nargs=2, default=["a", "b"])
    p.add_argument("--plot", default=None, help="write the curves of both runs to this PNG")
    args = p.parse_args()
    runs = [[json.loads(line) for line in open(path)] for path in (args.a, args.b)]
    n = min(len(r) for r in runs)
    la, lb = args.labels
    print(f"{'epoch':>5} | {la + ' test acc':>16} {lb + ' test acc':>16} {'diff (points)':>14}")
    for i in range(n):
        a, b = runs[0][i]["test_acc"], runs[1][i]["test_acc"]
        if i < 4 or (i + 1) % 5 == 0 or i == n - 1:
            print(f"{i + 1:>5} | {a:>16.4f} {b:>16.4f} {100 * (a - b):>+14.2f}")
    diffs = [100 * abs(runs[0][i]["test_acc"] - runs[1][i]["test_acc"]) for i in range(n)]
    print(f"largest per-epoch difference {max(diffs):.2f} points; final {la} {runs[0][n - 1]['test_acc']:.4f}, "
          f"{lb} {runs[1][n - 1]['test_acc']:.4f}; training time {la} {runs[0][n - 1]['elapsed_s']:.0f} s, "
          f"{lb} {runs[1][n - 1]['elapsed_s']:.0f} s")
    if args.plot:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(10, 3.8))
        ax1, ax2 = fig.subplots(1, 2)
        for run, label in zip(runs, args.labels):
            ep = [r["epoch"] for r in run]
            ax1.plot(ep, [r["test_loss"] for r in run], label=f"{label} test")
            ax1.plot(ep, [r["train_loss"] for r in run], "--", label=f"{label} train (smoothed targets)")
            ax2.plot(ep, [r["test_acc"] for r in run], label=f"{label} test")
            ax2.plot(ep, [r["train_acc"] for r in run], "--", label=f"{label} train")
        ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
        ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()

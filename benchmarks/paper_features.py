"""The paper's feature experiments at small scale, through the command line a user runs.

    python benchmarks/paper_features.py --data subset --epochs 10 --out runs/paper-features \
        --json benchmarks/results/paper_features_subset.json

1. Position embeddings (the paper's Table 8): cifar-tiny trained with every variant, same recipe.
2. Hybrid vs pure ViT at equal training time: cifar-hybrid for as many epochs as fit in the time
   the pure model's run took.
3. Transfer across resolution: the 32x32 learned-position model evaluated on the test images
   upsampled to 48x48, with its position embeddings resized, then fine-tuned at 48x48.

Each run is its own `minivit train` / `finetune` / `evaluate` process; the script prints a
Markdown table of test accuracy and training time per run and, with --json, writes the raw file that
docs/results.md renders (every run's last row and median images/s, the resolution readings, the machine).
A run whose folder already holds a checkpoint is read, not trained again (its row says so: the machine
record and wall time are this call's).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minivit.machine import machine  # noqa: E402


def minivit(*args):
    r = subprocess.run([sys.executable, "-m", "minivit", *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"minivit {' '.join(args)} failed:\n{r.stderr}")
    return r


def rows_of(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def last(out):
    return rows_of(out)[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="subset")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="runs/paper-features")
    p.add_argument("--json", help="write the raw results here (e.g. benchmarks/results/paper_features_subset.json)")
    a = p.parse_args()
    started = time.perf_counter()
    out = Path(a.out)
    common = ["--data", a.data, "--batch-size", "128", "--lr", "2e-3", "--warmup", "1", "--no-progress"]
    table = []

    def train(name, *extra, epochs=a.epochs):
        folder = out / name
        trained = not (folder / "checkpoint.npz").exists()
        if trained:
            t0 = time.perf_counter()
            minivit("train", *common, "--epochs", str(epochs), "--out", str(folder), *extra)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        rows = rows_of(folder)
        row = rows[-1]
        table.append((name, " ".join(extra), row["epoch"], row["test_acc"], row["elapsed_s"],
                      statistics.median(r["images_per_s"] for r in rows), trained))
        return row

    # 1. position embeddings
    for variant in ("none", "learned", "learned2d", "sincos", "relative"):
        train(f"pos-{variant}", "--preset", "cifar-tiny", "--pos-embed", variant)
    train("pos-learned-every-layer", "--preset", "cifar-tiny", "--pos-embed-every-layer")
    train("pos-learned2d-every-layer", "--preset", "cifar-tiny", "--pos-embed", "learned2d", "--pos-embed-every-layer")
    # 2. hybrid at the pure model's training time
    budget = last(out / "pos-learned")["elapsed_s"]
    probe = train("hybrid-1-epoch", "--preset", "cifar-hybrid", epochs=1)
    epochs = max(1, int(budget // probe["elapsed_s"]))
    train(f"hybrid-{epochs}-epochs", "--preset", "cifar-hybrid", epochs=epochs)
    # 3. transfer across resolution: the learned-position model at 48x48
    ckpt = str(out / "pos-learned" / "checkpoint.npz")
    data48 = out / "data48"
    if not data48.exists():  # the test images upsampled to 48x48, as an image folder
        from minivit.data import load_dataset
        from minivit.models.resolution import resize_images
        from PIL import Image
        d = load_dataset(a.data)
        for split, s in (("train", d.train), ("test", d.test)):
            for i, (img, y) in enumerate(zip(resize_images(s.images, 48), s.labels)):
                f = data48 / split / d.classes[y] / f"{i:05d}.png"
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img.transpose(1, 2, 0)).save(f)
    ev32 = json.loads(minivit("evaluate", ckpt, "--json").stdout)
    ev48 = json.loads(minivit("evaluate", ckpt, "--data", str(data48), "--json").stdout)
    ft = out / "finetune-48"
    if not (ft / "checkpoint.npz").exists():
        minivit("finetune", ckpt, "--data", str(data48), "--epochs", "2", "--lr", "0.01", "--batch-size", "128",
                "--out", str(ft), "--no-progress")
    print("| run | flags | epochs | test accuracy | training time (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, flags, ep, acc, secs, _, _ in table:
        print(f"| {name} | `{flags}` | {ep} | {acc:.1%} | {secs:.0f} |")
    print(f"\nresolution: the 32x32 model on its 32x32 test images {ev32['accuracy']:.1%}; on the same images "
          f"upsampled to 48x48 with bilinearly resized position embeddings {ev48['accuracy']:.1%}; "
          f"after 2 epochs of fine-tuning at 48x48 (SGD) {last(ft)['test_acc']:.1%}")
    if a.json:
        raw = {"command": "python benchmarks/paper_features.py " + " ".join(sys.argv[1:]),
               "data": a.data, "common_flags": " ".join(common), "machine": machine(),
               "wall_s": round(time.perf_counter() - started, 1),
               "runs": [{"name": name, "flags": flags, "epochs": ep, "test_acc": acc, "elapsed_s": round(secs, 2),
                         "images_per_s_median": round(ips, 1), "trained_by_this_call": trained}
                        for name, flags, ep, acc, secs, ips, trained in table],
               "resolution": {"eval_32": ev32["accuracy"], "eval_48_resized_pos": ev48["accuracy"],
                              "finetune_48_epochs": 2, "finetune_48_test_acc": last(ft)["test_acc"]}}
        Path(a.json).write_text(json.dumps(raw, indent=1) + "\n")
        print(f"raw results: {a.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""minivit on CuPy against PyTorch on CUDA: training-step throughput and peak memory on one GPU.

    python benchmarks/gpu_step.py                                   # the five rows of docs/results.md
    python benchmarks/gpu_step.py --rows cifar-tiny:256 --rounds 5 --impls minivit,minivit-unfused,torch
    python benchmarks/gpu_step.py --one minivit --preset cifar-tiny --batch-size 256   # one process, one JSON line

A step is what the trainer does: forward, label-smoothed cross-entropy, backward, clipping to
global norm 1, AdamW, and reading the loss back to the host. Implementations:

    minivit           minivit on CuPy, float32, with its fused kernels (minivit/gpu/kernels.py)
    minivit-unfused   the same with MINIVIT_FUSED=0: every layer as its NumPy-style lines
    torch             the same functional ViT in PyTorch eager (benchmarks/torch_vit.py), float32,
                      TF32 off (PyTorch's default for matrix products), torch.optim.AdamW (foreach)
    torch-bf16        the same under torch.autocast(bfloat16), for reference
    trainer           minivit's Trainer on random uint8 images (augmentation, normalisation, the loop):
                      images/s of its second epoch, to compare with the bare minivit step

Each round runs every implementation in its own process, in turn, the order rotating from round
to round; a row's ratio is the median over rounds of minivit's images/s over PyTorch's. Memory
is the peak of bytes held by live arrays over two steps after the timing: PyTorch's
max_memory_allocated, and for CuPy the peak of its pool's used_bytes, read by a counting
allocator (installed only after the timed steps, since it costs host time per allocation).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = ["cifar-tiny:256", "cifar-small:256", "cifar-base:256", "vit-s16:128", "vit-b16:64"]


def data(cfg, batch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cfg.in_channels, cfg.image_size, cfg.image_size)).astype(np.float32)
    return x, rng.integers(0, cfg.num_classes, batch)


def minivit_step(cfg, batch):
    import cupy
    import minivit as mv
    from minivit.train import Engine
    mv.use_backend("cupy")
    x, y = data(cfg, batch)
    x, y = cupy.asarray(x), cupy.asarray(y)
    params = mv.init_params(cfg, seed=0)
    opt = mv.AdamW(lr=1e-3, weight_decay=0.05)
    engine = Engine(cfg)

    def step(i):
        loss, _, grads = engine.loss_and_grads(params, x, y, 0.1, 0, i)
        float(loss)
        mv.clip_grad_norm(grads, 1.0)
        opt.step(params, grads)
    sync = cupy.cuda.Device().synchronize

    def peak_bytes(run):
        pool = cupy.get_default_memory_pool()
        peak = [pool.used_bytes()]

        def counting_malloc(size):
            mem = pool.malloc(size)
            peak[0] = max(peak[0], pool.used_bytes())
            return mem
        cupy.cuda.set_allocator(counting_malloc)
        run()
        cupy.cuda.set_allocator(pool.malloc)
        return peak[0]
    return step, sync, peak_bytes


def torch_step(cfg, batch, bf16=False):
    import torch
    sys.path.insert(0, HERE)
    from torch_vit import torch_train_step
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    step = torch_train_step(cfg, *data(cfg, batch), device="cuda", bf16=bf16)

    def peak_bytes(run):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated()
    return step, torch.cuda.synchronize, peak_bytes


def trainer_throughput(cfg, batch, steps):
    """images/s of the Trainer's second epoch (the first includes compiling the kernels)."""
    import tempfile
    import minivit as mv
    from minivit.data import Dataset, Split
    from minivit.train import TrainConfig, Trainer
    mv.use_backend("cupy")
    rng = np.random.default_rng(0)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    split = lambda n: Split(rng.integers(0, 256, (n, *shape)).astype(np.uint8), rng.integers(0, cfg.num_classes, n))
    ds = Dataset(split(batch * steps), split(batch), tuple(f"c{i}" for i in range(cfg.num_classes)), "random")
    tcfg = TrainConfig(epochs=2, batch_size=batch, eval_batch_size=batch)
    with tempfile.TemporaryDirectory() as out:
        hist = Trainer(cfg, tcfg, ds, out, progress=False, log=lambda *a: None).fit()
    return hist[-1]["images_per_s"]


def one(impl, preset, batch, warmup, steps):
    """Measure one implementation in this process; returns a dict (printed as one JSON line)."""
    import minivit as mv
    cfg = mv.ViTConfig.preset(preset)
    row = {"impl": impl, "preset": preset, "batch": batch}
    if impl == "trainer":
        row["images_per_s"] = trainer_throughput(cfg, batch, max(steps, 20))
        return row
    if impl == "minivit-unfused":
        os.environ["MINIVIT_FUSED"] = "0"
    make = {"minivit": minivit_step, "minivit-unfused": minivit_step, "torch": torch_step,
            "torch-bf16": lambda c, b: torch_step(c, b, bf16=True)}[impl]
    step, sync, peak_bytes = make(cfg, batch)
    for i in range(warmup):
        step(i)
    sync()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(warmup + i)
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)

    def two_steps():
        for i in range(2):
            step(warmup + steps + i)
        sync()
    row.update(images_per_s=batch / med, step_ms=med * 1e3, peak_mb=peak_bytes(two_steps) / 2 ** 20)
    return row


def run_one(impl, preset, batch, a):
    cmd = [sys.executable, os.path.abspath(__file__), "--one", impl, "--preset", preset, "--batch-size", str(batch),
           "--warmup", str(a.warmup), "--steps", str(a.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help="preset:batch, comma-separated")
    p.add_argument("--impls", default="minivit,torch", help="comma-separated: minivit, minivit-unfused, torch, "
                                                            "torch-bf16, trainer")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--one", help="measure this implementation in this process and print one JSON line")
    p.add_argument("--preset", default="cifar-tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="also write every measurement to this JSON file")
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.preset, a.batch_size, a.warmup, a.steps)), flush=True)
        return
    impls = a.impls.split(",")
    results = []
    for spec in a.rows.split(","):
        preset, batch = spec.split(":")
        for r in range(a.rounds):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for impl in order:
                res = run_one(impl, preset, int(batch), a)
                res["round"] = r
                results.append(res)
                extra = f", {res['step_ms']:.2f} ms, peak {res['peak_mb']:.0f} MB" if "step_ms" in res else ""
                print(f"{preset} {batch} round {r + 1}: {impl} {res['images_per_s']:.0f} img/s{extra}", flush=True)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(results, f, indent=1)
    print()
    print(table(results, impls))


def table(results, impls):
    """Markdown table: median images/s per implementation, minivit/PyTorch ratio (median of round ratios)."""
    rows = sorted({(r["preset"], r["batch"]) for r in results}, key=lambda k: [(x["preset"], x["batch"]) for x in results].index(k))
    head = "| model, batch | " + " | ".join(impls) + " | minivit / torch | peak MB minivit / torch |"
    lines = [head, "|" + " --- |" * (len(impls) + 3)]
    for preset, batch in rows:
        mine = [r for r in results if (r["preset"], r["batch"]) == (preset, batch)]
        by = lambda impl: [r for r in mine if r["impl"] == impl]
        cells = [f"{statistics.median(x['images_per_s'] for x in by(i)):,.0f}" if by(i) else "" for i in impls]
        ratio = mem = ""
        if by("minivit") and by("torch"):
            rounds = sorted({r["round"] for r in mine})
            ratios = [[x for x in by("minivit") if x["round"] == k][0]["images_per_s"] /
                      [x for x in by("torch") if x["round"] == k][0]["images_per_s"] for k in rounds]
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            mem = (f"{statistics.median(x['peak_mb'] for x in by('minivit')):,.0f} / "
                   f"{statistics.median(x['peak_mb'] for x in by('torch')):,.0f}")
        lines.append(f"| `{preset}`, {batch} | " + " | ".join(cells) + f" | {ratio} | {mem} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Two versions of minivit in one process, timed in alternation: did a change make a layer faster?

    git worktree add /tmp/minivit-before HEAD~1
    python benchmarks/versions_ab.py --before /tmp/minivit-before --case gelu-eval --pairs 300
    python benchmarks/versions_ab.py --before /tmp/minivit-before --case forward-vit-ti16 --pairs 40

`--before` is another checkout of the project; its `minivit` package is imported beside this
one under another name, and both run the same case on the same arrays, one call each in turn
(the order swapped every pair), on one thread (the `train-*` and `eval-*` cases: the trainer's
engine with two threads, one BLAS thread each). This machine's speed drifts by tens of percent
within minutes, so two processes (or two runs) minutes apart cannot resolve a change of a few
percent; two calls milliseconds apart can. For each pair the ratio is before's time over this
tree's (above 1: this tree is faster); the median and quartiles of those ratios are printed.

This compares minivit with minivit. Against PyTorch, which must not share a process with NumPy's
work, use benchmarks/compare_step.py.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_before(path):
    """Import path/minivit as the package `minivit_before` (its relative imports stay inside it)."""
    init = os.path.join(os.path.abspath(path), "minivit", "__init__.py")
    if not os.path.isfile(init):
        sys.exit(f"--before {path}: no minivit/__init__.py there; give a checkout of this project")
    spec = importlib.util.spec_from_file_location("minivit_before", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["minivit_before"] = module
    spec.loader.exec_module(module)
    return module


def cases():
    """name -> a function of one minivit package that returns the call to time."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(1 << 17) * 3).astype(np.float32)        # 512 KB: one core's L2 here
    logits = x[:(1 << 17) // 197 * 197].reshape(-1, 197)
    tokens = rng.standard_normal((8 * 197, 192), dtype=np.float32)
    w, b = rng.standard_normal(192, dtype=np.float32), rng.standard_normal(192, dtype=np.float32)
    w_fc1 = rng.standard_normal((192, 768), dtype=np.float32)           # vit-ti16's fc1 on 8 images
    hidden = rng.standard_normal((8 * 197, 768), dtype=np.float32)

    def model(preset, batch, mode):
        """mode "train": forward, loss and backward through the trainer's engine (two threads);
        "eval": inference through the engine, in its pieces, as `evaluate` runs it; "forward": one
        inference forward pass of the whole batch, one thread"""
        def make(m):
            from importlib import import_module
            cfg = m.ViTConfig.preset(preset)
            params = m.init_params(cfg, seed=0, dtype="float32")
            images = np.random.default_rng(1).standard_normal((batch, 3, cfg.image_size, cfg.image_size),
                                                              dtype=np.float32)
            if mode == "forward":
                return lambda: m.forward(params, images, cfg, keep_cache=False)
            engine = import_module(m.__name__ + ".train").Engine(cfg, threads=2)
            if mode == "eval":
                return lambda: engine.predict_logits(params, images)
            labels = np.random.default_rng(2).integers(0, cfg.num_classes, batch)
            return lambda: engine.loss_and_grads(params, images, labels, 0.1, 0, 0)
        return make

    def global_norm(m):
        """The norm that clipping takes, over gradients shaped like vit-ti16's 5.7M parameters"""
        shapes = m.init_params(m.ViTConfig.preset("vit-ti16"), seed=0, dtype="float32")
        grads = {k: rng.standard_normal(v.shape, dtype=np.float32) for k, v in shapes.items()}
        return lambda: m.global_norm(grads)

    return {
        "global-norm-vit-ti16": global_norm,
        "train-cifar-tiny": model("cifar-tiny", 256, "train"),
        "train-cifar-small": model("cifar-small", 128, "train"),
        "train-cifar-base": model("cifar-base", 128, "train"),
        "train-cifar-hybrid": model("cifar-hybrid", 256, "train"),
        "train-vit-ti16": model("vit-ti16", 16, "train"),
        "gelu-eval": lambda m: lambda: m.gelu_forward(x, "exact", False),
        "gelu-train": lambda m: lambda: m.gelu_forward(x, "exact", True),
        "softmax-197": lambda m: lambda: m.softmax(logits),
        "layernorm-eval": lambda m: lambda: m.layernorm_forward(tokens, w, b, keep_cache=False),
        "layernorm-backward": lambda m: lambda: m.layernorm_backward(tokens, m.layernorm_forward(tokens, w, b)[1]),
        "linear-backward": lambda m: lambda: m.linear_backward(hidden, (tokens, w_fc1)),
        "eval-cifar-tiny": model("cifar-tiny", 500, "eval"),
        "eval-cifar-small": model("cifar-small", 500, "eval"),
        "eval-vit-ti16": model("vit-ti16", 16, "eval"),
        "forward-vit-ti16": model("vit-ti16", 8, "forward"),
        "forward-cifar-tiny": model("cifar-tiny", 31, "forward"),
    }


def run(make, before, after, pairs):
    """Time the case built for each package, one call of each in turn, the order swapped every pair."""
    calls = {"before": make(before), "after": make(after)}
    for f in calls.values():
        for _ in range(3):
            f()
    ratios, times = [], {"before": [], "after": []}
    for i in range(pairs):
        t = {}
        for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
            t0 = time.perf_counter()
            calls[name]()
            t[name] = time.perf_counter() - t0
            times[name].append(t[name])
        ratios.append(t["before"] / t["after"])
    return ratios, times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="another checkout of this project")
    p.add_argument("--case", required=True, choices=sorted(cases()))
    p.add_argument("--pairs", type=int, default=200)
    a = p.parse_args()
    if a.pairs < 4:
        p.error(f"--pairs must be at least 4, got {a.pairs}")
    from threadpoolctl import threadpool_limits
    import minivit
    from minivit.train.mallopt import keep_freed_memory
    keep_freed_memory()   # as the trainer does: temporaries reuse freed memory
    before = load_before(a.before)
    make = cases()[a.case]
    with threadpool_limits(1, user_api="blas"):
        ratios, times = run(make, before, minivit, a.pairs)
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    print(f"{a.case}: before {statistics.median(times['before']) * 1e3:.2f} ms, "
          f"this tree {statistics.median(times['after']) * 1e3:.2f} ms (medians of {a.pairs} calls each)")
    print(f"time before / time now, per pair: median {statistics.median(ratios):.3f}, "
          f"quartiles {q1:.3f}-{q3:.3f}")


if __name__ == "__main__":
    main()

"""Where a training step's time goes: per-layer milliseconds, FLOPs, GFLOP/s and share of the step.

    minivit profile --preset cifar-small --batch-size 128
    minivit profile --preset vit-ti16 --batch-size 8 --mode eval     # inference: forward only
    report = minivit.tools.profile.profile_step(ViTConfig.preset("cifar-small"), batch_size=128); print(report)

The profiler runs the trainer's own step on random images: the engine's `loss_and_grads` (forward,
cross-entropy and backward over the batch cut into the trainer's pieces of about 2,048 tokens,
Engine.TRAIN_TOKENS_PER_SHARD; the pieces run one after another here), the ranks' sum under MPI, then
the trainer's `update` (clipping and AdamW), with every layer function temporarily wrapped by a
timer (`instrument`). With mode="eval" it profiles inference instead: the engine's `predict_logits`,
as `evaluate` runs it (no dropout, nothing kept for a backward pass, Engine.EVAL_TOKENS_PER_SHARD).
A layer's time is exclusive: time spent in a nested layer (the linear layers inside
attention, say) is booked to that layer, not to its caller. Layers are named by the
parameters they use ("attn.qkv", "norm1", ...; summed over the blocks), so a row is one
kind of layer across the whole model.

FLOPs count multiply-adds as two, for the matrix products only (the standard count: a linear
layer of M rows is 2 M Din Dout forward and twice that backward). The elementwise layers
(LayerNorm, GELU, softmax) do a handful of operations per element; their speed is set by
passes over memory, not by arithmetic, so they show no FLOPs. The step runs on one thread
with one BLAS thread: all the pieces that the trainer's two data-parallel threads share out,
one after another (on a GPU, as the engine runs it there, the whole batch at once). Peak
memory is the largest amount of array memory the step holds at once (NumPy reports its
allocations to tracemalloc), beside the parameters and AdamW state.
"""
import time
import tracemalloc
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..layers import attention, stem
from ..models import block, classify, families, vit as model
from ..backend import cpu_blas, cpu_kernels, get_array_module, gpu_kernels, to_device
from ..config import ViTConfig
from ..models.init import init_params
from ..train import trainer
from ..train.optim import AdamW
from ..train.distributed import current_world
from ..train.engine import Engine, images_per_shard

# (module, function) pairs that are wrapped. Functions are looked up by their module's global
# name at call time, so each is wrapped in every module that imports it.
_LAYERS = {
    "linear_forward": (attention, block, model), "linear_backward": (attention, block, model),
    "layernorm_forward": (block, model), "layernorm_backward": (block, model),
    "attention_forward": (attention,), "attention_backward": (attention,),
    "gelu_forward": (block,), "gelu_backward": (block,),
    "dropout_forward": (attention, block, model), "dropout_backward": (attention, block, model),
    "mhsa_forward": (block,), "mhsa_backward": (block,),
    "mlp_forward": (block,), "mlp_backward": (block,),
    "block_forward": (model,), "block_backward": (model,),
    "patch_embed_forward": (model,), "patch_embed_backward": (model,),
    "stem_forward": (model,), "stem_backward": (model,),                       # the hybrid's stem ...
    "conv2d_forward": (stem,), "conv2d_backward": (stem,), "groupnorm_forward": (stem,),
    "groupnorm_backward": (stem,), "relu_forward": (stem,), "relu_backward": (stem,),  # ... and its layers
    "cross_entropy": (classify,), "clip_grad_norm": (trainer,),
}
_KIND = {"forward": "model", "backward": "model", "cross_entropy": "cross_entropy", "clip_grad_norm": "clip_grad_norm",
         "step": "adamw", "sum_step": "allreduce (MPI)"}
_DIRECTION = {"cross_entropy": "both", "clip_grad_norm": "optimizer", "step": "optimizer", "sum_step": "sum"}


def _flops(fn, args, kwargs):
    """Matrix-product FLOPs of one call, from its arguments' shapes."""
    if fn == "linear_forward":
        x, w = args[0], args[1]
        return 2 * x.size // x.shape[-1] * w.shape[0] * w.shape[1]
    if fn == "linear_backward":
        dy, (x, w) = args[0], args[1]
        return 4 * dy.size // dy.shape[-1] * w.shape[0] * w.shape[1]  # dx and dw
    if fn == "attention_forward":
        q, k = args[0], args[1]
        return 4 * q.size * k.shape[-2]                 # q k^T and attn v: 2 N N d each per head
    if fn == "attention_backward":
        dout, cache = args[0], args[1]
        return 8 * dout.size * cache.k.shape[-2]       # dv, dattn, dq, dk
    if fn == "conv2d_forward":
        x, w, stride, pad = args[0], args[1], kwargs.get("stride", 1), kwargs.get("pad", 0)
        Ho = (x.shape[2] + 2 * pad - w.shape[2]) // stride + 1
        Wo = (x.shape[3] + 2 * pad - w.shape[3]) // stride + 1
        return 2 * x.shape[0] * Ho * Wo * w.size                # (B Ho Wo) x (C kh kw) x F
    if fn == "conv2d_backward":
        cols, w = args[1][0], args[1][2]
        return 4 * cols.size * w.shape[0]                       # dw and dcols: (B Ho Wo) x (C kh kw) x F each
    if fn == "patch_embed_forward":
        x, w = args[0], args[1]
        return 2 * x.size // w.shape[1] // w.shape[2] // w.shape[3] * w.size  # (B N) x (C P P) x D
    if fn == "patch_embed_backward":
        cols, _, w = args[1]
        need_dx = args[2] if len(args) > 2 else kwargs.get("need_dx", True)
        return 2 * cols.shape[0] * cols.shape[1] * w.shape[0] * (2 if need_dx else 1)  # dw (and dx)
    return 0


def _layer_name(fn, args, names):
    """A row name: the parameters' name without the block prefix ('attn.qkv'), else the layer kind."""
    kind = _KIND.get(fn) or fn.rsplit("_", 1)[0]
    w = None
    if fn in ("linear_forward", "layernorm_forward", "patch_embed_forward", "conv2d_forward", "groupnorm_forward"):
        w = args[1]
    elif fn in ("linear_backward", "layernorm_backward"):
        w = args[1][-1]
    elif fn in ("patch_embed_backward", "conv2d_backward", "groupnorm_backward"):
        w = args[1][2]
    name = names.get(id(w))
    if name is None:
        return kind
    name = name.rsplit(".", 1)[0]                                     # drop ".w"
    return name.split(".", 2)[2] if name.startswith("blocks.") else name  # drop "blocks.3."


@dataclass
class Report:
    """Per-layer times of a profiled step (`rows`) and its totals; print() it for a table."""
    cfg: ViTConfig
    batch_size: int
    steps: int
    step_ms: float                             # un-instrumented step, median
    mode: str = "train"                        # "train": the training step; "eval": forward only
    piece: int = 0                             # images per piece of the batch (the engine's shards)
    rows: list = field(default_factory=list)  # dicts: layer, direction, ms, flops, calls
    param_mb: float = 0.0
    peak_mb: float = 0.0
    ranks: int = 1                             # under mpiexec: the batch is shared, the figures are rank 0's
    kernels: str = ""                          # what ran the elementwise layers: fused kernels, or NumPy/CuPy lines

    def __str__(self):
        pieces = f" in pieces of up to {self.piece}" if self.piece < self.batch_size else ""
        lines = [f"{self.cfg.dim}-wide, {self.cfg.depth}-deep ViT, {self.cfg.num_patches + 1} tokens, batch "
                 f"{self.batch_size}{pieces}: {self.step_ms:.1f} ms per {_WHAT[self.mode]} (median of {self.steps}, one thread"
                 f"{f' on each of {self.ranks} MPI ranks; rank 0 computes its share of the batch' if self.ranks > 1 else ''})"
                 + (f"; {self.kernels}" if self.kernels else ""),
                 f"{'layer':<16} {'pass':<8} {'ms':>8} {'GFLOP':>8} {'GFLOP/s':>8} {'share':>6}"]
        total_ms = sum(r["ms"] for r in self.rows)
        for r in sorted(self.rows, key=lambda r: -r["ms"]):
            gf = r["flops"] / 1e9
            rate = f"{gf / (r['ms'] / 1e3):8.1f}" if r["flops"] else f"{'-':>8}"
            flops = f"{gf:8.3f}" if r["flops"] else f"{'-':>8}"
            lines.append(f"{r['layer']:<16} {r['direction']:<8} {r['ms']:8.2f} {flops} {rate} {r['ms'] / total_ms:6.1%}")
        gf = sum(r["flops"] for r in self.rows) / 1e9
        lines.append(f"{'total':<16} {'':<8} {total_ms:8.2f} {gf:8.3f} {gf / (total_ms / 1e3):8.1f} {1:6.1%}"
                     "  (timed layer by layer)")
        state, during = ("parameters and AdamW state", "step") if self.mode == "train" else ("parameters", "forward pass")
        lines.append(f"memory: {state} {self.param_mb:.1f} MB; peak during a {during} {self.peak_mb:.1f} MB more")
        return "\n".join(lines)


@contextmanager
def instrument(names, objects=()):
    """Wrap every layer function with an exclusive timer for the duration of the block: those of _LAYERS, the
    model families' forward and backward (the model's own glue), and the methods named in `objects`
    ((object, method name) pairs: the optimiser's step, the ranks' sum).

    Yields a dict (layer, direction) -> [seconds, flops, calls]. `names` maps id(array) to the
    parameter's name, so calls can be booked to 'attn.qkv', 'norm1', ..."""
    stats = defaultdict(lambda: [0.0, 0, 0])
    stack = []  # [start time, time spent in nested wrapped calls]
    originals = []

    def wrap(fn_name, fn):
        direction = _DIRECTION.get(fn_name) or ("backward" if fn_name.endswith("backward") else "forward")

        def timed(*args, **kwargs):
            stack.append([time.perf_counter(), 0.0])
            try:
                out = fn(*args, **kwargs)
            finally:
                start, nested = stack.pop()
                spent = time.perf_counter() - start
                if stack:
                    stack[-1][1] += spent
            row = stats[_layer_name(fn_name, args, names), direction]
            row[0] += spent - nested
            row[1] += _flops(fn_name, args, kwargs)
            row[2] += 1
            return out
        return timed

    for fn_name, modules in _LAYERS.items():
        for mod in modules:
            originals.append((mod, fn_name, getattr(mod, fn_name)))
            setattr(mod, fn_name, wrap(fn_name, getattr(mod, fn_name)))
    for obj, fn_name in objects:
        originals.append((obj, fn_name, None))
        setattr(obj, fn_name, wrap(fn_name, getattr(obj, fn_name)))
    families_before = dict(families.FAMILIES)
    for name, fam in families_before.items():
        families.FAMILIES[name] = fam._replace(forward=wrap("forward", fam.forward), backward=wrap("backward", fam.backward))
    try:
        yield stats
    finally:
        families.FAMILIES.update(families_before)
        for obj, fn_name, fn in reversed(originals):
            if fn is None:
                delattr(obj, fn_name)        # an instance's method: the class's shows through again
            else:
                setattr(obj, fn_name, fn)


_WHAT = {"train": "training step", "eval": "forward pass (inference)"}


def profile_step(cfg, batch_size=128, steps=3, warmup=1, seed=0, label_smoothing=0.1, mode="train", pieces=True):
    """Profile `steps` training steps of `cfg` on random images (mode="eval": `steps` inference
    forward passes); returns a Report. pieces=False runs the whole batch through each layer at
    once, one piece, instead of the trainer's pieces (the shapes of a textbook FLOP or memory count)."""
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"profile needs steps >= 1, warmup >= 0 and batch_size >= 1, got {steps}, {warmup}, {batch_size}")
    if mode not in _WHAT:
        raise ValueError(f"profile mode must be 'train' or 'eval', got {mode!r}")
    from threadpoolctl import threadpool_limits

    from ..train.mallopt import keep_freed_memory
    keep_freed_memory()
    rng = np.random.default_rng(seed)
    x = to_device(rng.standard_normal((batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)), "float32")
    y = to_device(rng.integers(0, cfg.num_classes, batch_size))
    params = init_params(cfg, seed=seed)
    opt = AdamW(lr=1e-4, weight_decay=0.05)
    names = {id(v): k for k, v in params.items()}
    world = current_world()   # under mpiexec: this rank's rows of the batch, and the gradients' Allreduce
    if batch_size < world.size:   # every rank knows this, so every rank stops here alike
        raise ValueError(f"--batch-size {batch_size} leaves ranks of the {world.size} without an image to profile: "
                         f"give a batch of at least {world.size} images (each rank profiles its own rows)")
    mine = world.rows(batch_size)
    engine = Engine(cfg, 2 if pieces else 1, serial=True)   # the trainer's pieces (two threads' worth), one at a time
    if not pieces:
        engine.TRAIN_TOKENS_PER_SHARD = engine.EVAL_TOKENS_PER_SHARD = 1 << 40   # the whole batch at once

    def step(i):
        t0 = time.perf_counter()
        if mode == "eval":
            float(engine.predict_logits(params, x[mine])[0, 0])
            return time.perf_counter() - t0
        first, batch = (mine.start, batch_size) if world.size > 1 else (0, None)
        loss, _, grads = engine.loss_and_grads(params, x[mine], y[mine], label_smoothing, seed, i, first=first, batch=batch)
        if world.size > 1:   # the ranks' gradients summed: one Allreduce of one flat buffer (train/distributed.py)
            grads, loss, _, _ = world.sum_step(grads, loss, 0)
        trainer.update(params, grads, opt, clip_norm=1.0)   # clipping and AdamW, as the trainer's step
        float(loss)
        return time.perf_counter() - t0

    with threadpool_limits(1, user_api="blas"):
        for i in range(warmup):
            step(i)
        plain = [step(warmup + i) for i in range(steps)]  # un-instrumented: the honest step time
        with instrument(names, [(opt, "step"), (world, "sum_step")]) as stats:
            timed = sum(step(warmup + steps + i) for i in range(steps))
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        step(warmup + 2 * steps)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    size = engine.EVAL_TOKENS_PER_SHARD if mode == "eval" else engine.TRAIN_TOKENS_PER_SHARD
    piece = max(sl.stop - sl.start for sl in engine.shards(mine.stop - mine.start, images_per_shard(cfg, size)))
    engine.close()
    state = sum(v.nbytes for v in params.values()) + (2 * sum(v.nbytes for v in opt.m.values()) if mode == "train" else 0)
    return Report(cfg, batch_size, steps, float(np.median(plain)) * 1e3, mode, piece, _rows(stats, timed, steps),
                  state / 2 ** 20, peak / 2 ** 20, world.size, _kernels_in_use(x))


def _rows(stats, timed, steps):
    """The report's rows from the timers: per layer and pass, per step; what no timer saw is '(other)'."""
    rows = [{"layer": layer, "direction": d, "ms": s * 1e3 / steps, "flops": f // steps, "calls": n // steps}
            for (layer, d), (s, f, n) in stats.items() if n]
    other = timed * 1e3 / steps - sum(r["ms"] for r in rows)  # the step's own lines, between the layers
    rows.append({"layer": "(other)", "direction": "", "ms": max(other, 0.0), "flops": 0, "calls": 0})
    return rows


def _kernels_in_use(x):
    if get_array_module(x) is np:
        kernels = "fused CPU kernels (numba)" if cpu_kernels() else "the layers' own lines (no kernels)"
        return kernels + (", the large products by MKL" if cpu_blas() else ", products by NumPy's BLAS")
    return "fused CUDA kernels" if gpu_kernels() else "CuPy lines (no fused kernels)"

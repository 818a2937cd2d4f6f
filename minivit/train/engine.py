"""The data-parallel engine: a batch split into shards that threads take in turn, their gradients
summed in a fixed order; and evaluation over a Split in the same shards."""
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

from .mallopt import keep_freed_memory
from ..backend import backend_name, xp as backend_xp
from ..data.transforms import normalize
from ..machine import available_memory
from ..models.families import family_of
from ..models.objectives import objective_of
from .random_streams import ImageStreams, step_stream


def blas_single_thread(threads, ranks=1):
    """With several data-parallel threads, or several MPI ranks, each thread should run BLAS on one
    core (else 2 x 2 threads fight): give a rank its cores with --threads."""
    if threads <= 1 and ranks <= 1:
        return nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")


def shard_slices(n, threads, size=None):
    """Slices of n rows: one per thread, or (with size) pieces of at most `size` rows, as many
    for each thread (five pieces on two threads would leave one thread idle through the fifth).
    No rows (an MPI rank's empty share of a small batch): no slices."""
    if n == 0:
        return []
    k = min(threads * (-(-n // (size * threads)) if size else 1), n)
    bounds = [n * i // k for i in range(k + 1)]  # Python ints: a NumPy scalar here would
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]  # promote float32 math to float64


def add_grads(total, grads):
    """total + grads, name by name, added into total's arrays; total None: grads itself."""
    if total is None:
        return grads
    for k, g in grads.items():
        total[k] += g
    return total


def images_per_shard(cfg, tokens):
    """Images in a piece of about `tokens` tokens on the CPU; None on a GPU (the whole batch at once)."""
    if backend_name() != "numpy":
        return None
    return max(1, tokens // cfg.tokens_per_image)


def step_memory(cfg, batch_size, threads=2):
    """About how many bytes a training step's activations take: the images in flight (the shards the
    threads run at once on the CPU, the whole batch on a GPU) times what each keeps for backward.

    Per image and block, in float32: the LayerNorms, qkv, the context, the projections and the MLP
    keep about T (10 D + 3 M) numbers, T = tokens per image; attention keeps its T x T probabilities
    per head, and backward makes their gradient beside them: 3 H T^2. It is an estimate, to refuse a
    setting that cannot fit before any work; docs/results.md measures real steps."""
    if not hasattr(cfg, "depth"):   # the comparison CNN: small maps, never refused
        return 0
    T, D, M, H = cfg.tokens_per_image, cfg.dim, cfg.mlp_dim, cfg.heads
    per_shard = images_per_shard(cfg, Engine.TRAIN_TOKENS_PER_SHARD)
    in_flight = batch_size if per_shard is None else min(batch_size, per_shard * threads)
    return 4 * in_flight * cfg.depth * (T * (10 * D + 3 * M) + 3 * H * T * T)


def check_memory(cfg, batch_size, threads, data_bytes=0, what="this setting"):
    """Raise a MemoryError that names the figures when the data (`data_bytes`) and a training step's
    activations (step_memory) would not fit in the memory available now."""
    step, free = step_memory(cfg, batch_size, threads), available_memory()
    if free is None or data_bytes + step <= free:
        return
    raise MemoryError(f"{what} would need about {(data_bytes + step) / 1e9:.1f} GB: {data_bytes / 1e9:.1f} GB of "
                      f"images and about {step / 1e9:.1f} GB for a training step's activations ({cfg.tokens_per_image:,} "
                      f"tokens per image, attention's tokens^2 included), more than the {free / 1e9:.1f} GB available; "
                      "choose a smaller image size, model or batch")


class Engine:
    """Runs forward/backward over a batch split into shards, which its threads take in turn.

    NumPy releases the GIL inside ufuncs and matrix products, so two threads each
    working on their own shards keep both cores busy even in the elementwise layers,
    which NumPy runs on one core. Shard gradients are summed in a fixed order, so the
    result does not depend on thread timing.
    """

    def __init__(self, cfg, threads=1, serial=False):
        """serial: cut the batch for `threads` threads but run the shards one after another in this thread
        (the profiler's way: its timers then see one layer at a time)."""
        keep_freed_memory()  # reuse freed temporaries between steps instead of faulting in new pages
        self.cfg = cfg
        self.objective = objective_of(cfg)   # what a shard's step computes, chosen once (minivit/models/objectives.py)
        self.threads = threads if backend_name() == "numpy" else 1
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 and not serial else None

    def map(self, fn, shards):
        """fn over the shards, the threads taking them in turn; yields the results in shard order."""
        return self.pool.map(fn, shards) if self.pool else map(fn, shards)

    def shards(self, n, size=None):
        """Slices of n rows for the threads: one each, or pieces of at most `size` rows (shard_slices)."""
        return shard_slices(n, self.threads, size)

    # A training step runs in shards of about 2,048 tokens (31 CIFAR images, 10 at 224x224), which
    # the threads take in turn: several per thread on the CIFAR models. A small shard's layer
    # outputs and temporaries stay nearer the core, and a thread slowed by the machine's other work
    # takes fewer shards; vit-ti16 at 16 images keeps its two shards. What this buys in time and
    # memory: docs/results.md, "Training in shards of about 2,048 tokens".
    TRAIN_TOKENS_PER_SHARD = 2048

    def loss_and_grads(self, params, x, y, label_smoothing, seed, step, first=0, batch=None, cfg=None):
        """Mean loss over the batch, number correct, gradients of the mean loss.

        y: the objective's targets: labels (B,), soft targets (B, K), or patch colours (B, N).
        x, y may be the rows [first, first + len(y)) of a global batch of `batch` images (an MPI
        rank's slice, minivit/train/distributed.py); the loss and gradients are then this slice's
        share of the global batch's mean, so the ranks' sum is the mean. Every draw depends on an
        image's place in the global batch, never on the shards: what the batch draws once (masked
        patch prediction: which patches to corrupt) is cut into them, and dropout, drop path and
        PatchDropout draw from each image's own stream (minivit/train/random_streams.py).
        cfg: the model at the batch's image size, when progressive resizing trains on smaller images."""
        B = len(y)
        batch = batch or B
        obj, cfg = self.objective, cfg or self.cfg
        plan = obj.draw_plan(step_stream(seed, step, "masks"), batch, cfg)
        xp = backend_xp()

        def shard(sl):
            rows = slice(first + sl.start, first + sl.stop)   # the shard's rows of the global batch
            rng = ImageStreams(seed, step, rows.start, rows.stop) if cfg.random_masks else None
            share = (sl.stop - sl.start) / batch        # each shard's share of the batch mean
            return obj.step(params, x[sl], y[sl], cfg, label_smoothing, share, rng, obj.shard_plan(plan, rows, xp))

        loss, correct, grads = 0, 0, None
        for l_, c_, g_ in self.map(shard, self.shards(B, images_per_shard(cfg, self.TRAIN_TOKENS_PER_SHARD))):
            loss, correct = loss + l_, correct + c_     # in shard order, and each shard's
            grads = add_grads(grads, g_)                # gradients are freed once added
        if grads is None:   # no rows here (an MPI rank of a batch smaller than the ranks): it adds zeros to the sum
            grads = {k: xp.zeros_like(v) for k, v in params.items()}
        return loss, correct, grads

    def close(self):
        """Stop the worker threads (an Engine that is only dropped keeps them until exit)."""
        if self.pool:
            self.pool.shutdown()

    # Inference keeps nothing for a backward pass, so it can run in small pieces whose
    # activations stay in the CPU's caches (measured in docs/results.md, "Inference, and where it
    # falls short"). About 2,048 tokens: 31 CIFAR images, 10 at 224x224.
    EVAL_TOKENS_PER_SHARD = 2048

    def predict_logits(self, params, x):
        forward = family_of(self.cfg).forward
        def shard(sl):
            return forward(params, x[sl], self.cfg, keep_cache=False)[0]
        shards = self.shards(len(x), images_per_shard(self.cfg, self.EVAL_TOKENS_PER_SHARD))
        return backend_xp().concatenate(list(self.map(shard, shards)))


def evaluate(params, cfg, split, mean, std, batch_size=500, threads=2, label_smoothing=0.0, engine=None, world=None,
             tta=""):
    """-> dict(loss, accuracy, predictions) over a Split, in eval mode, for the model's objective:
    classification (predictions: (N,) numpy) or masked patch prediction (predictions: None). `tta`: a
    classifier's test-time augmentation, its views' logits averaged (data/transforms.py: tta_views).

    Pass the trainer's `engine` to reuse its threads; otherwise one is made and closed here.
    Under MPI (`world`, minivit/train/distributed.py) rank r scores the batches r, r + N, r + 2N ...
    and the sums are added over the ranks: every rank gets the figures, rank 0 the predictions."""
    own = engine is None
    engine = engine or Engine(cfg, threads)
    obj, xp = engine.objective, backend_xp()
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    total, correct, count, preds = 0.0, 0.0, 0, []
    with blas_single_thread(engine.threads, size):
        for a in range(rank * batch_size, len(split.labels), batch_size * size):   # this rank's batches
            x = normalize(split.images[a:a + batch_size], mean, std, xp, params_dtype(params))
            y = obj.eval_targets(x, split.labels[a:a + batch_size], mean, std, cfg)
            l_, c_, n_, p_ = obj.score(engine, params, x, y, a, cfg, label_smoothing, tta=tta)
            total, correct, count = total + l_, correct + c_, count + n_
            preds.append(p_)
    if own:
        engine.close()
    if size > 1:
        total, correct, count = world.sum_numbers([total, correct, count])
        gathered = world.gather(preds)       # rank r's batches are r, r + N, ...: interleave them back
        preds = [] if gathered is None else [g[i] for i in range(max(map(len, gathered))) for g in gathered if i < len(g)]
    preds = np.concatenate(preds) if preds and preds[0] is not None else None
    return {"loss": total / max(count, 1), "accuracy": correct / max(count, 1), "predictions": preds}


def params_dtype(params):
    """The parameters' float type, which the input batches take."""
    return next(iter(params.values())).dtype

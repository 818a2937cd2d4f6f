"""The data-parallel engine: a batch split into shards that threads take in turn, their gradients
summed in a fixed order; and evaluation over a Split in the same shards."""
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

from .allocator import keep_freed_memory
from ..backend import backend_name, get_array_module, to_numpy, xp as backend_xp
from ..data.transforms import normalize
from ..layers.loss import cross_entropy
from ..models.families import family_of
from ..models.mpp import corruption_plan, mpp_step, plan_rows


def _blas_single_thread(threads):
    """With several data-parallel threads, each should run BLAS on one core (else 2 x 2 threads fight)."""
    if threads <= 1:
        return nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")


def classify_step(params, x, y, cfg, label_smoothing, share, rng, plan=None):
    """One shard of a training step: loss (times the shard's `share` of the batch), number
    correct, gradients of the scaled loss."""
    model = family_of(cfg)                      # the ViT, or the comparison CNN (minivit/models/families.py)
    logits, cache = model.forward(params, x, cfg, train=True, rng=rng)
    loss, dlogits = cross_entropy(logits, y, label_smoothing)   # y: labels (B,), or MixUp/CutMix targets (B, K)
    if share != 1.0:                            # (one shard, as on a GPU: nothing to scale)
        loss, dlogits = loss * share, dlogits * share
    grads = model.backward(dlogits, cache)
    label = y if y.ndim == 1 else y.argmax(axis=1)   # mixed targets: the larger share counts as the label
    return loss, (logits.argmax(axis=1) == label).sum(), grads


STEPS = {"classify": classify_step, "mpp": mpp_step}  # by ViTConfig.head


def shard_slices(n, threads, size=None):
    """Slices of n rows: one per thread, or (with size) pieces of at most `size` rows, as many
    for each thread (five pieces on two threads would leave one thread idle through the fifth)."""
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
    per_image = getattr(cfg, "num_patches", (cfg.image_size // 4) ** 2) + 1  # a CNN: as a patch-4 ViT
    return max(1, tokens // per_image)


class Engine:
    """Runs forward/backward over a batch split into shards, which its threads take in turn.

    NumPy releases the GIL inside ufuncs and matrix products, so two threads each
    working on their own shards keep both cores busy even in the elementwise layers,
    which NumPy runs on one core. Shard gradients are summed in a fixed order, so the
    result does not depend on thread timing.
    """

    def __init__(self, cfg, threads=1):
        keep_freed_memory()  # reuse freed temporaries between steps instead of faulting in new pages
        self.cfg = cfg
        self.threads = threads if backend_name() == "numpy" else 1
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def _map(self, fn, shards):
        """fn over the shards, the threads taking them in turn; yields the results in shard order."""
        return self.pool.map(fn, shards) if self.pool else map(fn, shards)

    def _shards(self, n, size=None):
        return shard_slices(n, self.threads, size)

    # A training step runs in shards of about 2,048 tokens (31 CIFAR images, 10 at 224x224), which
    # the threads take in turn: several per thread on the CIFAR models. A small shard's layer
    # outputs and temporaries stay nearer the core, and a thread slowed by the machine's other work
    # takes fewer shards. Forward and backward ran 8-15% faster on the CIFAR presets than in one
    # shard per thread, in a fifth to a third of the memory; vit-ti16 at 16 images keeps its two
    # shards (docs/results.md).
    TRAIN_TOKENS_PER_SHARD = 2048

    def loss_and_grads(self, params, x, y, label_smoothing, seed, step):
        """Mean loss over the batch, number correct, gradients of the mean loss.

        y: the labels (B,), or for masked patch prediction the patch colours (B, N)."""
        B = len(y)
        step_fn = STEPS[self.cfg.head]
        plan = None  # masked patch prediction: which patches to corrupt, drawn once for the batch
        if self.cfg.head == "mpp":
            plan = corruption_plan(np.random.default_rng([seed, step, 2]), B, self.cfg.num_patches)

        def shard(sl):
            i = sl.start
            random = any(getattr(self.cfg, k, 0.0) for k in ("dropout", "attn_dropout", "drop_path"))  # (a CNN has none)
            rng = np.random.default_rng([seed, step, 1, i]) if random else None  # dropout and drop-path masks
            share = (sl.stop - sl.start) / B            # each shard's share of the batch mean
            rows = plan_rows(plan, sl, get_array_module(x)) if plan is not None else None
            return step_fn(params, x[sl], y[sl], self.cfg, label_smoothing, share, rng, rows)

        loss, correct, grads = 0, 0, None
        for l_, c_, g_ in self._map(shard, self._shards(B, images_per_shard(self.cfg, self.TRAIN_TOKENS_PER_SHARD))):
            loss, correct = loss + l_, correct + c_     # in shard order, and each shard's
            grads = add_grads(grads, g_)                # gradients are freed once added
        return loss, correct, grads

    def close(self):
        """Stop the worker threads (an Engine that is only dropped keeps them until exit)."""
        if self.pool:
            self.pool.shutdown()

    # Inference keeps nothing for a backward pass, so it can run in small pieces whose
    # activations stay in the CPU's caches: 1.3-1.4x faster than one piece per thread and a
    # seventh of the memory (docs/results.md). About 2,048 tokens: 31 CIFAR images, 10 at 224x224.
    EVAL_TOKENS_PER_SHARD = 2048

    def predict_logits(self, params, x):
        forward = family_of(self.cfg).forward
        def shard(sl):
            return forward(params, x[sl], self.cfg, keep_cache=False)[0]
        shards = self._shards(len(x), images_per_shard(self.cfg, self.EVAL_TOKENS_PER_SHARD))
        return backend_xp().concatenate(list(self._map(shard, shards)))


def evaluate(params, cfg, split, mean, std, batch_size=500, threads=2, label_smoothing=0.0, engine=None):
    """-> dict(loss, accuracy, predictions (N,) numpy) over a Split, in eval mode.

    Pass the trainer's `engine` to reuse its threads; otherwise one is made and closed here."""
    own = engine is None
    engine = engine or Engine(cfg, threads)
    xp = backend_xp()
    total, preds = 0.0, []
    with _blas_single_thread(engine.threads):
        for a in range(0, len(split.labels), batch_size):
            x = normalize(split.images[a:a + batch_size], mean, std, xp, _dtype(params))
            y = xp.asarray(split.labels[a:a + batch_size])
            logits = engine.predict_logits(params, x)
            loss, _ = cross_entropy(logits, y, label_smoothing)
            total += float(loss) * len(y)
            preds.append(to_numpy(logits.argmax(axis=1)))
    if own:
        engine.close()
    preds = np.concatenate(preds)
    return {"loss": total / len(split.labels), "accuracy": float((preds == split.labels).mean()), "predictions": preds}


def _dtype(params):
    """The parameters' float type, which the input batches take."""
    return next(iter(params.values())).dtype

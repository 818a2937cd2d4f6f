"""The training loop: batches, data-parallel gradient steps, evaluation, checkpoints, metrics.

Every random choice is derived from (seed, epoch) or (seed, step): the shuffle of
epoch e from default_rng([seed, e]), augmentation, dropout and masked patches of step s from
default_rng([seed, s, ...]). A checkpoint's step therefore fixes all later
randomness, and a resumed run continues exactly as an uninterrupted one.
"""
import hashlib
import json
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import plots
from .allocator import keep_freed_memory
from ..backend import backend_name, fused_kernels, get_array_module, to_numpy, xp as backend_xp
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..data.datasets import augment, channel_stats, mix_batch, normalize
from ..data.randaugment import rand_augment, random_erase
from ..atomic import write_text_atomic
from ..layers.loss import check_labels, cross_entropy
from ..models.families import family_of
from .optim import EMA, SGD, AdamW, clip_grad_norm, warmup_cosine
from ..models.mpp import colour_targets, corruption_plan, evaluate_mpp, mpp_step, plan_rows
from ..io.runlock import RunLock


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    epochs: int = 10              # passes over the training set
    batch_size: int = 128         # images per optimiser step
    lr: float = 1e-3              # peak learning rate (AdamW)
    min_lr: float = 1e-5          # learning rate at the end of the cosine decay
    warmup_epochs: float = 1.0    # linear warmup length, in epochs
    weight_decay: float = 0.05    # AdamW decoupled decay (2-D+ tensors only)
    label_smoothing: float = 0.1  # cross-entropy target smoothing
    clip_norm: float = 1.0        # clip gradients to this global norm (0: off)
    augment: bool = True          # random crop (pad 4) and horizontal flip
    seed: int = 0                 # seeds init, shuffling, augmentation and dropout
    threads: int = 2              # data-parallel threads on NumPy (one BLAS thread each)
    eval_batch_size: int = 500    # images per evaluation batch
    optimizer: str = "adamw"      # "adamw", or "sgd" (with momentum: the paper's fine-tuning optimiser)
    momentum: float = 0.9         # SGD momentum (unused by AdamW)
    mixup: float = 0.0            # MixUp's Beta(alpha, alpha) parameter; 0: off (minivit/data/datasets.py: mix_batch)
    cutmix: float = 0.0           # CutMix's Beta(alpha, alpha) parameter; 0: off; both on: each batch one of the two
    ema: float = 0.0              # decay of an EMA of the weights, evaluated beside them (e.g. 0.999); 0: off
    randaugment: int = 0          # RandAugment's number of operations per image; 0: off (minivit/data/randaugment.py)
    randaugment_magnitude: float = 9.0   # their magnitude, 0..10
    random_erasing: float = 0.0   # probability that an image gets a box erased to its mean colour; 0: off

    def __post_init__(self):
        checks = [("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
                  ("lr", self.lr > 0), ("min_lr", self.min_lr >= 0), ("warmup_epochs", self.warmup_epochs >= 0),
                  ("weight_decay", self.weight_decay >= 0), ("label_smoothing", 0 <= self.label_smoothing < 1),
                  ("clip_norm", self.clip_norm >= 0), ("threads", self.threads >= 1),
                  ("eval_batch_size", self.eval_batch_size >= 1), ("optimizer", self.optimizer in ("adamw", "sgd")),
                  ("momentum", 0 <= self.momentum < 1), ("mixup", self.mixup >= 0), ("cutmix", self.cutmix >= 0),
                  ("ema", 0 <= self.ema < 1), ("randaugment", self.randaugment >= 0),
                  ("randaugment_magnitude", 0 <= self.randaugment_magnitude <= 10),
                  ("random_erasing", 0 <= self.random_erasing <= 1)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError("invalid training setting(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))


def _blas_single_thread(threads):
    """With several data-parallel threads, each should run BLAS on one core (else 2 x 2 threads fight)."""
    if threads <= 1:
        return nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")


def epoch_order(seed, epoch, n):
    """The shuffled order of the n training images in `epoch`: default_rng([seed, epoch])."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_batch(split, tcfg, mean, std, epoch, index, step, dtype="float32", order=None):
    """Batch `index` of `epoch`: its images augmented with the streams of `step` and normalised,
    on the configured backend. Shuffle: epoch_order (pass `order` to reuse it within an epoch).
    In order: RandAugment on the uint8 images (default_rng([seed, step, 4])), random crop and
    flip (default_rng([seed, step, 0])), normalisation, random erasing (default_rng([seed, step, 5]))."""
    if order is None:
        order = epoch_order(tcfg.seed, epoch, len(split.labels))
    idx = np.sort(order[index * tcfg.batch_size:(index + 1) * tcfg.batch_size])
    xp = backend_xp()
    images = xp.asarray(split.images[idx])  # uint8: on a GPU the one copy, augmented and normalised there
    if tcfg.randaugment:
        images = rand_augment(images, np.random.default_rng([tcfg.seed, step, 4]), tcfg.randaugment,
                              tcfg.randaugment_magnitude)
    rng = np.random.default_rng([tcfg.seed, step, 0]) if tcfg.augment else None
    gpu = fused_kernels() if xp is not np else None
    if gpu:  # one kernel crops, flips and normalises (minivit/gpu/kernels.py), with the same draws
        x = gpu.augment_normalize(images, mean, std, dtype, rng)
    else:
        x = normalize(images if rng is None else augment(images, rng), mean, std, xp, dtype)
    if tcfg.random_erasing:
        x = random_erase(x, np.random.default_rng([tcfg.seed, step, 5]), tcfg.random_erasing)
    return x, xp.asarray(split.labels[idx])


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


def data_fingerprint(dataset):
    """A short hash of the training images and labels: the data's identity, whatever its path."""
    h = hashlib.blake2b(digest_size=8)
    for a in (dataset.train.images, dataset.train.labels):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    h.update("\n".join(dataset.classes).encode())
    return h.hexdigest()


def check_images_fit(cfg, dataset):
    """Raise a clear ValueError unless the dataset's images have the model's (C, H, W)."""
    if dataset.image_shape != (cfg.in_channels, cfg.image_size, cfg.image_size):
        C, H, W = dataset.image_shape
        raise ValueError(f"the data's images are {C}x{H}x{W} (C x H x W) but the model expects "
                         f"{cfg.in_channels}x{cfg.image_size}x{cfg.image_size}; choose a matching "
                         "preset or --image-size")


class Trainer:
    def __init__(self, cfg, tcfg, dataset, out_dir, resume=False, progress=True, log=print, on_epoch_end=None,
                 data_spec=None, init=None, plots=True):
        """`cfg`: a ViTConfig, or a CNNConfig (minivit/models/cnn.py) to train the comparison CNN with the same recipe.
        `init`: parameters to start from (fine-tuning) instead of a fresh initialisation.
        `plots`: draw curves.png and confusion.png after every epoch (False for many short runs)."""
        self.plots = plots
        self.cfg, self.tcfg, self.data = cfg, tcfg, dataset
        self.data_spec = data_spec or dataset.name  # recorded so `minivit evaluate` can reload the same data
        self.on_epoch_end = on_epoch_end  # called with the history after each evaluated epoch (live plots)
        self.out = Path(out_dir)
        self.progress, self.log = progress, log
        check_images_fit(cfg, dataset)
        if cfg.head == "classify" and len(dataset.classes) != cfg.num_classes:
            raise ValueError(f"the data has {len(dataset.classes)} classes but the model has "
                             f"num_classes={cfg.num_classes}")
        self.steps_per_epoch = math.ceil(len(dataset.train.labels) / tcfg.batch_size)
        self.total_steps = tcfg.epochs * self.steps_per_epoch
        self.ckpt_path = self.out / "checkpoint.npz"
        self.opt = (AdamW(lr=tcfg.lr, weight_decay=tcfg.weight_decay) if tcfg.optimizer == "adamw"
                    else SGD(lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay))
        self.fingerprint = data_fingerprint(dataset)
        if resume and self.ckpt_path.exists():
            self.params, _, opt_state, meta = load_checkpoint(self.ckpt_path, cfg,
                                                              require=("step", "train_config", "mean", "std"))
            saved = TrainConfig(**meta["train_config"])
            diff = [k for k in asdict(tcfg) if getattr(saved, k) != getattr(tcfg, k) and k != "epochs"]
            if diff:
                raise ValueError(f"--resume: {self.ckpt_path} was trained with different settings ({', '.join(diff)}); "
                                 "resume with the same flags or start a new --out folder")
            if meta.get("data_fingerprint", self.fingerprint) != self.fingerprint:
                raise ValueError(f"--resume: {self.ckpt_path} was trained on other data ({meta.get('data')!r}, "
                                 f"fingerprint {meta['data_fingerprint']}) than --data {self.data_spec!r} "
                                 f"(fingerprint {self.fingerprint}); resume with the same data or start a new --out folder")
            if tcfg.epochs < saved.epochs and meta["step"] > self.total_steps:
                raise ValueError(f"--resume: {self.ckpt_path} has already trained {meta['step']} steps, more than "
                                 f"--epochs {tcfg.epochs} allows")
            if tcfg.epochs != saved.epochs:
                log(f"--resume: training to {tcfg.epochs} epochs instead of {saved.epochs}; "
                    "the learning-rate schedule is stretched to the new length from here on")
            self.opt.load_state_dict(opt_state)
            self.step, self.mean, self.std = meta["step"], np.array(meta["mean"]), np.array(meta["std"])
            self.history = meta.get("history", [])
            self.elapsed = meta.get("elapsed", 0.0)
            self.log(f"resuming from {self.ckpt_path} at step {self.step} (epoch {self.step // self.steps_per_epoch + 1})")
        else:
            if resume:
                self.log(f"--resume: no checkpoint in {self.out}; starting a new run")
            # fine-tuning starts from given weights (their shapes must be the config's), training from scratch
            self.params = dict(init) if init is not None else family_of(cfg).init_params(cfg, seed=tcfg.seed)
            self.step = 0
            self.mean, self.std = channel_stats(dataset.train.images)
            self.history, self.elapsed = [], 0.0
        self.ema = None  # the weights' moving average (optim.EMA), evaluated beside them after every epoch
        if tcfg.ema:
            self.ema = EMA(self.params, tcfg.ema)
            if resume and self.ckpt_path.exists() and not self.ema.load_state_dict(opt_state):
                raise ValueError(f"--resume: {self.ckpt_path} holds no EMA of the weights; resume without --ema")
        self.engine = Engine(cfg, tcfg.threads)
        self._order = (None, None)  # (epoch, its shuffled order), drawn by _batch
        self.interrupted = None

    def meta(self):
        return {"step": self.step, "epoch": self.step / self.steps_per_epoch, "seed": self.tcfg.seed,
                "rng": {"seed": self.tcfg.seed, "step": self.step,
                        "streams": "shuffle default_rng([seed, epoch]); augment default_rng([seed, step, 0]); "
                                   "dropout default_rng([seed, step, 1, shard_start]); "
                                   "masked patches default_rng([seed, step, 2]); "
                                   "mixup/cutmix default_rng([seed, step, 3]); randaugment default_rng([seed, step, 4]); "
                                   "random erasing default_rng([seed, step, 5])"},
                "train_config": asdict(self.tcfg), "mean": list(map(float, self.mean)), "std": list(map(float, self.std)),
                "classes": list(self.data.classes), "history": self.history, "elapsed": self.elapsed,
                "backend": backend_name(), "data": self.data_spec, "data_fingerprint": self.fingerprint}

    def save(self):
        state = {**self.opt.state_dict(), **(self.ema.state_dict() if self.ema else {})}
        save_checkpoint(self.ckpt_path, self.params, self.cfg, state, self.meta())

    def _batch(self, epoch, index):
        if self._order[0] != epoch:  # the epoch's shuffle, drawn once per epoch
            self._order = (epoch, epoch_order(self.tcfg.seed, epoch, len(self.data.train.labels)))
        x, y = make_batch(self.data.train, self.tcfg, self.mean, self.std, epoch, index, self.step,
                          _dtype(self.params), order=self._order[1])
        if self.cfg.head == "mpp":  # pre-training: the targets are the patches' colours, not the labels
            y = colour_targets(x, self.mean, self.std, self.cfg)               # (B, N)
        elif self.tcfg.mixup or self.tcfg.cutmix:  # blend each image with another; soft targets (B, K)
            x, y = mix_batch(x, y, self.cfg.num_classes, np.random.default_rng([self.tcfg.seed, self.step, 3]),
                             self.tcfg.mixup, self.tcfg.cutmix)
        return x, y

    def fit(self):
        """Train to the end (or until interrupted), evaluating every epoch. Returns the history."""
        with RunLock(self.out):  # one run per folder (minivit/io/runlock.py)
            return self._fit()

    def _fit(self):
        from tqdm.auto import tqdm  # a widget in Jupyter, text in a terminal
        t = self.tcfg
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out / "config.json", json.dumps({"model": self.cfg.to_dict(), "train": asdict(t)}, indent=2))
        warmup = int(round(t.warmup_epochs * self.steps_per_epoch))
        interrupted = []  # set by Ctrl-C or SIGTERM; the step in progress finishes first
        handlers = _catch_signals(lambda name: interrupted.append(name))
        try:
            with _blas_single_thread(self.engine.threads):
                while self.step < self.total_steps and not interrupted:
                    epoch = self.step // self.steps_per_epoch
                    first = self.step % self.steps_per_epoch
                    bar = tqdm(range(first, self.steps_per_epoch), desc=f"epoch {epoch + 1}/{t.epochs}",
                               disable=not self.progress, leave=True, dynamic_ncols=True)
                    seen, loss_sum, correct_sum, t0 = 0, 0.0, 0, time.perf_counter()
                    for index in bar:
                        x, y = self._batch(epoch, index)
                        self.opt.lr = warmup_cosine(self.step, self.total_steps, warmup, t.lr, t.min_lr)
                        loss, correct, grads = self.engine.loss_and_grads(self.params, x, y, t.label_smoothing, t.seed, self.step)
                        loss = float(loss)  # the one host sync per step: the NaN guard needs it
                        if not math.isfinite(loss):
                            if self.cfg.head == "classify" and y.ndim == 1:  # on a GPU a bad label shows as NaN: name it
                                check_labels(y, self.cfg.num_classes)
                            kept = (f"the last good checkpoint is kept at {self.ckpt_path}" if self.ckpt_path.exists()
                                    else "no checkpoint had been saved yet (one is written at the end of every epoch)")
                            raise TrainingDiverged(
                                f"loss became {loss} at step {self.step} (epoch {epoch + 1}); parameters were not "
                                f"updated and {kept}. Lower --lr or raise --warmup")
                        if t.clip_norm:
                            clip_grad_norm(grads, t.clip_norm)
                        self.opt.step(self.params, grads)
                        if self.ema:
                            self.ema.update(self.params)
                        self.step += 1
                        n = len(y)
                        seen, loss_sum, correct_sum = seen + n, loss_sum + loss * n, correct_sum + float(correct)
                        dt = time.perf_counter() - t0
                        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct_sum / seen:.3f}",
                                        img_s=f"{seen / dt:.0f}", lr=f"{self.opt.lr:.2e}")
                        if interrupted:
                            break
                    bar.close()
                    self.elapsed += time.perf_counter() - t0
                    if self.step % self.steps_per_epoch == 0:  # a whole epoch: evaluate and record it
                        self._end_epoch(epoch, loss_sum / max(seen, 1), correct_sum / max(seen, 1), seen / max(dt, 1e-9))
                    else:
                        self.save()
        finally:
            _restore_signals(handlers)
        if interrupted:
            self.log(f"interrupted ({interrupted[0]}) at step {self.step}; saved {self.ckpt_path}. "
                     "Continue with the same command and --resume")
            self.interrupted = interrupted[0]
        return self.history

    def _end_epoch(self, epoch, train_loss, train_acc, images_per_s):
        """Evaluate, then commit the epoch: the checkpoint first, metrics.jsonl (rewritten from the
        checkpoint's history) and the plots after it, so no record shows an epoch the checkpoint lacks."""
        t = self.tcfg
        # The test loss is plain cross-entropy, as `minivit evaluate` reports it; the train loss is
        # the objective being minimised, with label smoothing.
        score = evaluate if self.cfg.head == "classify" else evaluate_mpp  # mpp: colours of the test images
        ev = score(self.params, self.cfg, self.data.test, self.mean, self.std, t.eval_batch_size, engine=self.engine)
        row = {"epoch": epoch + 1, "step": self.step, "lr": self.opt.lr, "train_loss": train_loss,
               "train_acc": train_acc, "test_loss": ev["loss"], "test_acc": ev["accuracy"],
               "images_per_s": images_per_s, "elapsed_s": self.elapsed}
        if self.ema:  # the moving average of the weights, on the same test images
            ev_ema = score(self.ema.params, self.cfg, self.data.test, self.mean, self.std, t.eval_batch_size,
                           engine=self.engine)
            row.update(ema_test_loss=ev_ema["loss"], ema_test_acc=ev_ema["accuracy"])
        self.history.append(row)
        self.save()
        write_text_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        self.log(f"epoch {epoch + 1}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                 f"test loss {ev['loss']:.4f} acc {ev['accuracy']:.4f}"
                 + (f" (EMA {row['ema_test_acc']:.4f})" if self.ema else "")
                 + f" | {images_per_s:.0f} img/s, {self.elapsed:.0f} s")
        if self.plots:
            plots.plot_curves(self.history, self.out / "curves.png",
                              "accuracy" if self.cfg.head == "classify" else "masked patches: 3-bit colour accuracy")
        if self.plots and ev["predictions"] is not None:
            plots.plot_confusion(self.data.test.labels, ev["predictions"], self.data.classes, self.out / "confusion.png",
                                 title=f"test accuracy {ev['accuracy']:.1%} after epoch {epoch + 1}")
        if self.on_epoch_end:
            self.on_epoch_end(self.history)


def _catch_signals(on_signal):
    """Turn Ctrl-C (SIGINT) and SIGTERM into a flag, so a step is never cut in half.
    Only the main thread may install handlers; elsewhere nothing is installed."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig, name in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
        old[sig] = signal.signal(sig, lambda *_, name=name: on_signal(name))
    return old


def _restore_signals(old):
    for sig, handler in old.items():
        signal.signal(sig, handler)

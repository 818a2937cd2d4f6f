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
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import plots
from .batches import epoch_order, make_batch
from .engine import Engine, _blas_single_thread, _dtype, evaluate
from .optim import EMA, SGD, AdamW, clip_grad_norm, warmup_cosine
from ..backend import backend_name
from ..config import TrainConfig
from ..atomic import write_text_atomic
from ..data.transforms import channel_stats, mix_batch
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.runlock import RunLock
from ..layers.loss import check_labels
from ..models.families import family_of
from ..models.mpp import colour_targets, evaluate_mpp


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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

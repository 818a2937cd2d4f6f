"""The training loop: batches, data-parallel gradient steps, evaluation, checkpoints, metrics.

Every random choice is derived from (seed, epoch) or (seed, step), through the table of streams in
train/random_streams.py. A checkpoint's step therefore fixes all later randomness, and a resumed run
continues exactly as an uninterrupted one.
"""
import json
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import plots, resizing
from .batches import batch_positions, epoch_order, make_batch
from .distributed import current_world
from .engine import Engine, blas_single_thread, evaluate, params_dtype
from .optim import EMA, SGD, AdamW, budget_decay, clip_grad_norm, warmup_decay
from .random_streams import describe as describe_streams, step_stream
from .run_state import RUN_POSITION, check_images_fit, check_resumable, data_fingerprint, share_state
from ..atomic_files import write_text_atomic
from ..backend import backend_name, cpu_kernels, get_array_module
from ..machine import machine
from ..data.splits import Dataset, Split, hold_out
from ..data.transforms import channel_stats, normalize
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.run_folder import RunLock
from ..models.families import family_of
from ..models.init import whiten_patch_embed


# --patch-init whiten estimates the patches' covariance from the first of the training images: 10,000 CIFAR images
# give 640,000 patches for a 48 x 48 covariance.
WHITEN_IMAGES = 10_000


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def update(params, grads, opt, clip_norm=0.0, ema=None):
    """What a step does after the gradients: clipping by global norm, the optimiser's step, the EMA."""
    if clip_norm:
        clip_grad_norm(grads, clip_norm)
    opt.step(params, grads)
    if ema:
        ema.update(params)


def make_optimizer(tcfg):
    """AdamW, or SGD with momentum (fine-tuning, paper 3.2), as the training settings ask."""
    if tcfg.optimizer == "adamw":
        return AdamW(lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    return SGD(lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)


class Trainer:
    def __init__(self, cfg, tcfg, dataset, out_dir, resume=False, progress=True, log=print, on_epoch_end=None,
                 data_spec=None, init=None, plots=True, world=None):
        """`cfg`: a ViTConfig, or a CNNConfig (minivit/models/cnn.py) to train the comparison CNN with the same recipe.
        `init`: parameters to start from (fine-tuning) instead of a fresh initialisation.
        `data_spec`: recorded so `minivit evaluate` can reload the same data (default: the dataset's name).
        `on_epoch_end`: called with the history after each evaluated epoch (live plots).
        `plots`: draw curves.png and confusion.png after every epoch (False for many short runs).
        `world`: the MPI processes training together (minivit/train/distributed.py); by default the
        ones mpiexec started, or this process alone. Only rank 0 reads or writes the run folder."""
        self.cfg, self.tcfg = cfg, tcfg
        self.world = world or current_world()
        self.world.guard_exceptions()   # a rank that fails, here or later, ends the job instead of hanging it
        if not self.world.is_root:   # one writer: the other ranks say nothing and draw nothing
            log, progress, on_epoch_end, plots = (lambda *a, **k: None), False, None, False
        self.engine = Engine(cfg, tcfg.threads)   # the shards and threads of a step, and the objective, chosen once
        self.objective = self.engine.objective    # classification or masked patch prediction (models/objectives.py)
        self.data_spec = data_spec or dataset.name
        self.out, self.ckpt_path = Path(out_dir), Path(out_dir) / "checkpoint.npz"
        self.progress, self.log, self.on_epoch_end, self.plots = progress, log, on_epoch_end, plots
        check_images_fit(cfg, dataset)
        if tcfg.patch_init and (init is not None or not hasattr(cfg, "patch_size") or cfg.stem_channels):
            raise ValueError(f"--patch-init {tcfg.patch_init} starts a new ViT's patch projection from the images; "
                             + ("this run starts from given weights (fine-tuning)" if init is not None else
                                "this model has no image patch projection (the CNN, or the hybrid's stem)"))
        self.objective.check_data(cfg, dataset)
        self.fingerprint = data_fingerprint(dataset)   # the data's identity: all of it, the held-out images included
        self.data, self.val = dataset, None
        if tcfg.val_split:   # honest selection: epochs are scored on held-out training images, not on the test set
            train, self.val = hold_out(dataset.train, tcfg.val_split)
            self.data = Dataset(train, dataset.test, dataset.classes, dataset.name)
        self.steps_per_epoch = math.ceil(len(self.data.train.labels) / tcfg.batch_size)
        # A run ends after --epochs, or (with --time-budget) once its training time reaches the budget.
        self.budget_s = tcfg.time_budget * 60.0
        self.total_steps = math.inf if self.budget_s else tcfg.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(tcfg.warmup_epochs * self.steps_per_epoch))
        self.warmup_end_s = None   # on a budget: the training time at which warmup ended (the decay starts there)
        self.opt = make_optimizer(tcfg)
        opt_state = None
        if self.world.is_root:
            opt_state = self._resume() if resume and self.ckpt_path.exists() else None
            if opt_state is None:
                if resume:
                    self.log(f"--resume: no checkpoint in {self.out}; starting a new run")
                self._start(init)
        if self.world.size > 1:
            opt_state = self._share_state(opt_state)
            self.log(f"MPI: {self.world.size} ranks share each batch of {tcfg.batch_size} images; "
                     + ", ".join(self.world.describe()))
        self.ema = None  # the weights' moving average (optim.EMA), evaluated beside them after every epoch
        if tcfg.ema:
            self.ema = EMA(self.params, tcfg.ema)
            if opt_state is not None and not self.ema.load_state_dict(opt_state):
                raise ValueError(f"--resume: {self.ckpt_path} holds no EMA of the weights; resume without --ema")
        self.resize = resizing.stages(cfg, tcfg.resize_schedule)   # [(size, until progress, the model at it)]
        self._order = (None, None)  # (epoch, its shuffled order), drawn by _batch
        self.interrupted = None

    def _model_now(self, meter):
        """The model's config for this step under --resize-schedule (resizing.py), or None for the full size:
        the progress is the steps done, or the training time spent with --time-budget."""
        p = ((self.elapsed + meter.seconds()) / self.budget_s if self.budget_s else self.step / self.total_steps)
        return resizing.model_at(self.resize, p)

    def _start(self, init):
        """A new run: fine-tuning starts from given weights (their shapes must be the config's), training
        from a fresh initialisation; normalisation from the training images' statistics."""
        self.params = dict(init) if init is not None else family_of(self.cfg).init_params(self.cfg, seed=self.tcfg.seed)
        self.step, self.history, self.elapsed = 0, [], 0.0
        self.mean, self.std = channel_stats(self.data.train.images)
        if self.tcfg.patch_init == "whiten":   # from the images the model trains on, as it sees them
            sample = self.data.train.images[:WHITEN_IMAGES]
            self.params = whiten_patch_embed(self.params, normalize(sample, self.mean, self.std, dtype="float64"),
                                             self.cfg)
            self.log(f"--patch-init whiten: the patch projection starts as a whitening of {len(sample):,} training "
                     "images' patches")

    def _share_state(self, opt_state):
        """Under MPI: rank 0's parameters, optimiser state and run position to every rank (run_state.py)."""
        root = self.world.is_root   # the other ranks have no position or parameters yet
        position, self.params, opt_state = share_state(self.world, {k: getattr(self, k) for k in RUN_POSITION}
                                                       if root else None, self.params if root else None, opt_state)
        for k, v in position.items():
            setattr(self, k, v)
        if opt_state is not None:
            self.opt.load_state_dict(opt_state)
        return opt_state

    def _resume(self):
        """Continue the checkpoint in the run folder, once check_resumable allows it. -> its optimiser state."""
        self.params, _, opt_state, meta = load_checkpoint(self.ckpt_path, self.cfg,
                                                          require=("step", "train_config", "mean", "std"))
        check_resumable(self.ckpt_path, meta, self.tcfg, self.fingerprint, self.data_spec, self.total_steps, self.log)
        self.opt.load_state_dict(opt_state)
        self.step, self.mean, self.std = meta["step"], np.array(meta["mean"]), np.array(meta["std"])
        self.history, self.elapsed = meta.get("history", []), meta.get("elapsed", 0.0)
        self.warmup_end_s = meta.get("warmup_end_s")
        self.log(f"resuming from {self.ckpt_path} at step {self.step} (epoch {self.step // self.steps_per_epoch + 1})")
        return opt_state

    def meta(self):
        return {"step": self.step, "epoch": self.step / self.steps_per_epoch, "seed": self.tcfg.seed,
                "rng": {"seed": self.tcfg.seed, "step": self.step, "streams": describe_streams()},
                "train_config": asdict(self.tcfg), "mean": list(map(float, self.mean)), "std": list(map(float, self.std)),
                "classes": list(self.data.classes), "history": self.history, "elapsed": self.elapsed,
                "warmup_end_s": self.warmup_end_s, "ranks": self.world.size,
                "backend": backend_name(), "data": self.data_spec, "data_fingerprint": self.fingerprint}

    def save(self):
        if not self.world.is_root:   # one writer
            return
        state = {**self.opt.state_dict(), **(self.ema.state_dict() if self.ema else {})}
        save_checkpoint(self.ckpt_path, self.params, self.cfg, state, self.meta())

    def fit(self):
        """Train to the end (or until interrupted), evaluating every epoch. Returns the history."""
        if not self.world.is_root:   # the other ranks never touch the run folder
            return self._fit()
        with RunLock(self.out):  # one run per folder (minivit/io/run_folder.py)
            return self._fit()

    def _fit(self):
        if self.world.is_root:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.out / "config.json", json.dumps({"model": self.cfg.to_dict(), "train": asdict(self.tcfg),
                                                                    "machine": machine(), "ranks": self.world.size}, indent=2))
        interrupted = []  # set by Ctrl-C or SIGTERM; the step in progress finishes first
        # Under MPI a signal is noted here and agreed on by all ranks with the next step's sum (_step):
        # every rank then stops after the same step.
        self._signals, self._interrupted = (interrupted if self.world.size == 1 else []), interrupted
        handlers = _catch_signals(self._signals.append)
        try:
            with blas_single_thread(self.engine.threads, self.world.size):
                self._warm_up()
                if interrupted:   # Ctrl-C while the kernels compiled: the run's start is saved, as a stop is
                    self.save()
                while self.step < self.total_steps and not interrupted and not self._budget_spent():
                    self._run_epoch(interrupted)
        finally:
            _restore_signals(handlers)
        if interrupted:
            self.log(f"interrupted ({interrupted[0]}) at step {self.step}; saved {self.ckpt_path}. "
                     "Continue with the same command and --resume")
            self.interrupted = interrupted[0]
        return self.history

    def _warm_up(self):
        """Compile the CPU kernels before the clock starts. numba compiles each kernel at its first call (tens of
        seconds on a cold cache), which would count as training time: a --time-budget run would spend part of
        its budget compiling. So: a forward and backward pass on two images of the first batch, an evaluation
        pass, and the optimiser's step (with the clipping and the EMA) on stand-ins of one element per
        parameter: the kernels compile for the types, not the sizes. Nothing of it is kept, and no random
        draw moves (the streams are keyed by step and image: random_streams.py)."""
        if backend_name() != "numpy" or cpu_kernels() is None or self._finished():
            return
        t0 = time.perf_counter()
        epoch, index = divmod(self.step, self.steps_per_epoch)
        x, y = self._batch(epoch, index)
        x, y = x[:2], y[:2]
        t = self.tcfg
        small = resizing.model_at(self.resize, 0.0)
        self.engine.loss_and_grads(self.params, resizing.resize(x, small), y, t.label_smoothing, t.seed, self.step,
                                   cfg=small)
        train = self.data.train
        self._evaluate(self.params, Split(train.images[:2], train.labels[:2]))
        stand_in = {k: np.zeros((1,) * v.ndim, v.dtype) for k, v in self.params.items()}
        update(stand_in, {k: np.zeros_like(v) for k, v in stand_in.items()}, make_optimizer(t), t.clip_norm,
               EMA(stand_in, t.ema) if t.ema else None)
        seconds = time.perf_counter() - t0
        if seconds > 2.0:
            self.log(f"compiled the CPU kernels in {seconds:.0f} s, before the training clock started")

    def _run_epoch(self, interrupted):
        """The rest of the current epoch, a step per batch; then evaluate and commit it, or (when
        `interrupted` fills up in between) save where it stopped."""
        epoch, first = divmod(self.step, self.steps_per_epoch)
        bar = self._progress_bar(epoch, first)
        meter = _EpochMeter(agreed=self.world.size > 1)   # its clock starts once the bar is up, as the loop's did
        for index in bar:
            x, y = self._batch(epoch, index)       # under MPI: this rank's rows of the batch
            loss, correct = self._step(x, y, epoch, meter)
            meter.add(loss, correct, self._batch_images)
            bar.set_postfix(**meter.postfix(), lr=f"{self.opt.lr:.2e}")
            if interrupted or self._budget_spent(meter):
                break
        bar.close()
        self.elapsed += meter.seconds()
        self._check_weights(epoch)                 # nothing non-finite is ever saved or evaluated
        if self.step % self.steps_per_epoch == 0 or self._budget_spent():  # an epoch, or the run, is done
            self._end_epoch(epoch, meter)
        else:
            self.save()

    def _budget_spent(self, meter=None):
        """Whether the training time (this epoch's so far too, given its meter) has reached --time-budget."""
        return bool(self.budget_s) and self.elapsed + (meter.seconds() if meter else 0.0) >= self.budget_s

    def _finished(self):
        return self.step >= self.total_steps or self._budget_spent()

    def _learning_rate(self, meter):
        """Warmup over the first steps, then the decay to min-lr as a function of progress: the steps
        done with --epochs; the training time spent, from warmup's end to the deadline, with a budget."""
        t = self.tcfg
        if not self.budget_s or self.step < self.warmup_steps:
            return warmup_decay(self.step, self.total_steps, self.warmup_steps, t.lr, t.min_lr, t.schedule)
        now = self.elapsed + meter.seconds()
        if self.warmup_end_s is None:
            self.warmup_end_s = now
        return budget_decay(now, self.warmup_end_s, self.budget_s, t.lr, t.min_lr, t.schedule)

    def _progress_bar(self, epoch, first):
        from tqdm.auto import tqdm  # a widget in Jupyter, text in a terminal
        of = f"{self.tcfg.epochs}" if not self.budget_s else f"? ({self.tcfg.time_budget:g} min)"
        return tqdm(range(first, self.steps_per_epoch), desc=f"epoch {epoch + 1}/{of}",
                    disable=not self.progress, leave=True, dynamic_ncols=True)

    def _batch(self, epoch, index):
        """Batch `index` of `epoch` (make_batch) with the objective's targets: labels, soft targets, colours.
        Under MPI only this rank's rows, built from the whole batch's draws (batch_positions)."""
        if self._order[0] != epoch:  # the epoch's shuffle, drawn once per epoch
            self._order = (epoch, epoch_order(self.tcfg.seed, epoch, len(self.data.train.labels)))
        t, order = self.tcfg, self._order[1]
        self._batch_images = n = len(order[index * t.batch_size:(index + 1) * t.batch_size])
        if self.world.size == 1:
            x, y = make_batch(self.data.train, t, self.mean, self.std, epoch, index, self.step,
                              params_dtype(self.params), order=order)
            return self.objective.targets(x, y, self.cfg, t, self.mean, self.std, step_stream(t.seed, self.step, "mix"))
        keep, partner, mine = batch_positions(n, self.world.rows(n), mixing=bool(t.mixup or t.cutmix))
        x, y = make_batch(self.data.train, t, self.mean, self.std, epoch, index, self.step, params_dtype(self.params),
                          order=order, keep=keep)
        x, y = self.objective.targets(x, y, self.cfg, t, self.mean, self.std, step_stream(t.seed, self.step, "mix"),
                                      partner=partner)
        return x[mine], y[mine]

    def _step(self, x, y, epoch, meter):
        """One optimiser step: learning rate, forward and backward, the NaN guard, clipping, update, EMA.
        -> the batch's mean loss and number correct."""
        t, w = self.tcfg, self.world
        self.opt.lr = self._learning_rate(meter)
        small = self._model_now(meter)   # progressive resizing: a smaller image, the same weights
        x = resizing.resize(x, small)
        # Under MPI, x and y are this rank's rows of the global batch (then the ranks' sums, and what
        # they must agree on: distributed.py); alone, the whole batch.
        first, batch = (w.rows(self._batch_images).start, self._batch_images) if w.size > 1 else (0, None)
        loss, correct, grads = self.engine.loss_and_grads(self.params, x, y, t.label_smoothing, t.seed, self.step,
                                                          first=first, batch=batch, cfg=small)
        if w.size > 1:
            flag = {"Ctrl-C": 1, "SIGTERM": 1000}.get(self._signals[0], 1) if self._signals else 0
            grads, loss, correct, (flag, clock) = w.sum_step(grads, loss, correct,
                                                             [flag, meter.seconds(local=True) if w.is_root else 0.0])
            meter.agreed = clock         # rank 0's clock, for the budget and the learning rate
            if flag and not self._interrupted:
                self._interrupted.append(self._signals[0] if self._signals else ("SIGTERM" if flag >= 1000 else "Ctrl-C"))
        loss = float(loss)  # the one host sync per step: the NaN guard needs it
        if not math.isfinite(loss):
            self._diverged(loss, y, epoch)
        update(self.params, grads, self.opt, t.clip_norm, self.ema)
        self.step += 1
        return loss, float(correct)

    def _diverged(self, loss, y, epoch):
        """Stop on a non-finite loss before the update, naming a bad target if that is the cause."""
        self.objective.check_targets(y, self.cfg)
        raise TrainingDiverged(f"loss became {loss} at step {self.step} (epoch {epoch + 1}); parameters were not "
                               f"updated and {self._kept()}. Lower --lr or raise --warmup")

    def _check_weights(self, epoch):
        """The loss is checked before each update; an update can still make the weights non-finite (an
        overflow on the last step of an epoch). Before anything is evaluated or saved, stop if it did."""
        weights = list(self.params.items()) + (list(self.ema.params.items()) if self.ema else [])
        bad = next((k for k, v in weights if not bool(get_array_module(v).isfinite(v).all())), None)
        if bad is not None:
            raise TrainingDiverged(f"the parameters became NaN or infinite at step {self.step} (epoch {epoch + 1}; "
                                   f"{bad} first); they were not saved and {self._kept()}. Lower --lr or raise --warmup")

    def _kept(self):
        return (f"the last good checkpoint is kept at {self.ckpt_path}" if self.ckpt_path.exists()
                else "no checkpoint had been saved yet (one is written at the end of every epoch)")

    def _end_epoch(self, epoch, meter):
        """Evaluate, then commit the epoch: the checkpoint first, metrics.jsonl (rewritten from the
        checkpoint's history) and the plots after it, so no record shows an epoch the checkpoint lacks."""
        # The test (and validation) loss is plain cross-entropy, as `minivit evaluate` reports it; the
        # train loss is the objective being minimised, with label smoothing. With --val-split every epoch
        # is scored on the held-out images and the test set is read once, after the last epoch.
        # --tta scores the run's last readings a second time, on the views (recorded as {name}_tta_acc ...):
        # every epoch's reading stays plain, so the curve is one kind of figure and evaluation stays cheap.
        split, name = (self.val, "val") if self.val is not None else (self.data.test, "test")
        row = {"epoch": epoch + 1, "step": self.step, "lr": self.opt.lr, "train_loss": meter.loss(),
               "train_acc": meter.accuracy()}
        finished = self._finished()
        tta = self.tcfg.tta if finished else ""
        ev, ev_ema = self._score(split, name, row)
        views = self._score(split, f"{name}_tta", row, tta)[0] if tta else None
        row.update(images_per_s=meter.images_per_s(), elapsed_s=self.elapsed)
        final_test = self.val is not None and finished
        test_ev = test_views = None
        if final_test:   # the one reading of the test set, for the report (with --tta, of its plain and its views' logits)
            test_ev = self._score(self.data.test, "test", row)[0]
            test_views = self._score(self.data.test, "test_tta", row, tta)[0] if tta else None
        # JSON has no NaN or infinity: a non-finite figure (an overflowing test loss) is recorded as null
        row = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()}
        self.history.append(row)
        self.save()
        write_text_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        on_views = lambda e: f" (--tta {tta}: acc {e['accuracy']:.4f})" if e is not None else ""
        scores = f"{name} loss {ev['loss']:.4f} acc {ev['accuracy']:.4f}" + on_views(views)
        if self.val is not None:
            scores += (f" | test loss {test_ev['loss']:.4f} acc {test_ev['accuracy']:.4f}" + on_views(test_views)
                       if final_test else " | test set not read")
        self.log(f"epoch {epoch + 1}: train loss {meter.loss():.4f} acc {meter.accuracy():.4f} | {scores}"
                 + (f" (EMA {ev_ema['accuracy']:.4f})" if self.ema else "")
                 + f" | {meter.images_per_s():.0f} img/s, {self.elapsed:.0f} s")
        if final_test:
            ev, views, split, name = test_ev, test_views, self.data.test, "test"
        shown = views if views is not None else ev   # the plots show the run's own figure: with --tta, the views'
        self._plot(epoch, shown, split, "validation" if name == "val" else name)
        if self.on_epoch_end:
            self.on_epoch_end(self.history)

    def _score(self, split, name, row, tta=""):
        """Evaluate the weights, and the EMA's, on `split` (with test-time augmentation `tta`); record them in
        `row` as {name}_loss, {name}_acc (ema_{name}_...). -> (the weights' evaluation, the EMA's or None)."""
        ev = self._evaluate(self.params, split, tta)
        row.update({f"{name}_loss": ev["loss"], f"{name}_acc": ev["accuracy"]})
        ev_ema = None
        if self.ema:
            ev_ema = self._evaluate(self.ema.params, split, tta)
            row.update({f"ema_{name}_loss": ev_ema["loss"], f"ema_{name}_acc": ev_ema["accuracy"]})
        return ev, ev_ema

    def _evaluate(self, params, split, tta=""):
        """The objective's loss and accuracy on a Split (the validation or the test images), in the trainer's threads."""
        return evaluate(params, self.cfg, split, self.mean, self.std, self.tcfg.eval_batch_size, engine=self.engine,
                        world=self.world, tta=tta)

    def _plot(self, epoch, ev, split, name):
        if not self.plots:
            return
        train = "train (label-smoothed)" if self.tcfg.label_smoothing else "train"
        plots.plot_curves(self.history, self.out / "curves.png", self.objective.CURVE, train_loss_label=train)
        if ev["predictions"] is not None:   # of the last evaluation: the test set's, or the validation set's
            plots.plot_confusion(split.labels, ev["predictions"], self.data.classes, self.out / "confusion.png",
                                 title=f"{name} accuracy {ev['accuracy']:.1%} after epoch {epoch + 1}")


class _EpochMeter:
    """The running mean loss and accuracy of an epoch's training batches, and their images per second."""

    def __init__(self, agreed=False):
        self.seen, self.loss_sum, self.correct_sum = 0, 0.0, 0.0
        self.t0 = time.perf_counter()
        self.dt = 0.0   # seconds from the epoch's start to its last step
        self.agreed = 0.0 if agreed else None   # under MPI: rank 0's clock at the last step's sum

    def add(self, loss, correct, n):
        self.seen, self.loss_sum, self.correct_sum = self.seen + n, self.loss_sum + loss * n, self.correct_sum + correct
        self.dt = time.perf_counter() - self.t0

    def seconds(self, local=False):
        """Seconds since the epoch started: this process's clock, or under MPI the one all ranks agreed on."""
        return time.perf_counter() - self.t0 if local or self.agreed is None else self.agreed

    def loss(self):
        return self.loss_sum / max(self.seen, 1)

    def accuracy(self):
        return self.correct_sum / max(self.seen, 1)

    def images_per_s(self):
        return self.seen / max(self.dt, 1e-9)

    def postfix(self):
        return {"loss": f"{self.loss():.3f}", "acc": f"{self.accuracy():.3f}", "img_s": f"{self.seen / self.dt:.0f}"}


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

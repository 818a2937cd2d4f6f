"""A run's bookkeeping around the training loop: the data's identity, the checks before a run starts or
resumes, and, under MPI, rank 0's run position handed to every rank."""
import hashlib
from dataclasses import asdict

import numpy as np

from ..config import TrainConfig

# What says where a run stands, beside its weights and optimiser state: the trainer's attributes of that name
RUN_POSITION = ("step", "history", "elapsed", "warmup_end_s", "mean", "std")


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


def check_resumable(path, meta, tcfg, fingerprint, data_spec, total_steps, log=print):
    """Raise a ValueError unless the checkpoint at `path` (its `meta`) can continue a run of `tcfg`
    on data with this `fingerprint`: the same settings but --epochs (and --threads), the same data, and no more steps
    already trained than the new length allows. A changed --epochs is said in the log."""
    saved = TrainConfig(**meta["train_config"])
    # --threads may change: every draw follows an image, not a thread (random_streams.py); so may the MPI ranks.
    # A recipe is a name for settings, which are compared themselves; test-time augmentation changes no weight.
    diff = [k for k in asdict(tcfg) if getattr(saved, k) != getattr(tcfg, k)
            and k not in ("epochs", "threads", "recipe", "tta")]
    if diff:
        raise ValueError(f"--resume: {path} was trained with different settings ({', '.join(diff)}); "
                         "resume with the same flags or start a new --out folder")
    if meta.get("data_fingerprint", fingerprint) != fingerprint:
        raise ValueError(f"--resume: {path} was trained on other data ({meta.get('data')!r}, "
                         f"fingerprint {meta['data_fingerprint']}) than --data {data_spec!r} "
                         f"(fingerprint {fingerprint}); resume with the same data or start a new --out folder")
    if tcfg.epochs < saved.epochs and meta["step"] > total_steps:
        raise ValueError(f"--resume: {path} has already trained {meta['step']} steps, more than "
                         f"--epochs {tcfg.epochs} allows")
    if tcfg.epochs != saved.epochs:
        log(f"--resume: training to {tcfg.epochs} epochs instead of {saved.epochs}; "
            "the learning-rate schedule is stretched to the new length from here on")


def share_state(world, position, params, opt_state):
    """Under MPI: rank 0's run position (RUN_POSITION's values), parameters and optimiser state (fresh or
    resumed) to every rank, so all start identical whatever their number was when the checkpoint was
    written. -> (position, params, opt_state), the same on every rank (opt_state None for a fresh run)."""
    root = world.is_root
    position = world.bcast(position if root else None)
    params = world.bcast_arrays(params if root else None)
    if not world.bcast(opt_state is not None if root else None):
        return position, params, None
    is_array = lambda v: getattr(v, "ndim", 0) > 0
    arrays = world.bcast_arrays({k: v for k, v in opt_state.items() if is_array(v)} if root else None)
    opt_state = {**world.bcast({k: v for k, v in opt_state.items() if not is_array(v)} if root else None), **arrays}
    return position, params, opt_state

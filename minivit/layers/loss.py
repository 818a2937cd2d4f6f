"""Softmax cross-entropy with optional label smoothing. Derivation: docs/derivations/cross_entropy.md."""
import numpy as np

from ..backend import fused, get_array_module


def cross_entropy(logits, labels, label_smoothing=0.0):
    """logits (B, K), labels -> (mean loss as a 0-d array, dlogits (B, K)).

    labels: integers (B,), or soft targets (B, K), each row a distribution over the K classes
    (what MixUp and CutMix make, minivit/data/transforms.py: mix_batch). The target is
    q = (1 - eps) * t + eps / K with t the one-hot label or the soft row (as torch
    F.cross_entropy's label_smoothing, which also takes class probabilities); loss =
    -sum_k q_k log softmax(z)_k, averaged over the batch, and dlogits = (softmax(z) - q) / B
    either way. log-softmax is z - max - log(sum exp(z - max)): finite for any finite logits.

    One fused kernel does the integer-label case where there is one (numba on a CPU,
    minivit/cpu/kernels.py). On a GPU it is a CUDA kernel (minivit/gpu/kernels.py) and the
    labels' range is not checked on the host, which would stop the GPU to read them back:
    a label outside [0, K) makes the loss NaN instead. `check_labels` names the bad label.
    """
    xp = get_array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    B, K = logits.shape
    labels = xp.asarray(labels)
    soft = labels.ndim == 2
    if labels.shape != ((B, K) if soft else (B,)):
        raise ValueError(f"labels must have shape ({B},) (integers) or ({B}, {K}) (soft targets) to match "
                         f"logits, got {tuple(labels.shape)}")
    if labels.dtype.kind not in ("f" if soft else "iu"):
        raise ValueError(f"labels must be integers (B,) or floating soft targets (B, K), got dtype {labels.dtype} "
                         f"and shape {tuple(labels.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    kernel = fused(logits, "cross_entropy")
    if kernel and not soft:  # one kernel: CUDA on a GPU, numba on a CPU (minivit/cpu/kernels.py)
        if xp is np:
            check_labels(labels, K)
        return kernel(logits, labels, label_smoothing)
    shifted = logits - logits.max(axis=1, keepdims=True)            # (B, K), max 0
    logsumexp = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # (B, 1)
    logp = shifted - logsumexp                                      # (B, K) log-probabilities
    if soft:
        q = (1.0 - label_smoothing) * labels.astype(logits.dtype) + label_smoothing / K  # (B, K)
    else:
        check_labels(labels, K)
        q = xp.full((B, K), label_smoothing / K, dtype=logits.dtype)    # (B, K) smoothed targets
        q[xp.arange(B), labels] += 1.0 - label_smoothing                # labels are distinct rows: no repeats
    loss = -(q * logp).sum() / B
    dlogits = (xp.exp(logp) - q) / B                                # (B, K): softmax - target
    return loss, dlogits


def check_labels(labels, K):
    """Raise a clear ValueError unless every label is in [0, K) (reads CuPy labels back to the host)."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= K):
        raise ValueError(f"labels out of range: must be in [0, {K}), got min {int(labels.min())}, max {int(labels.max())}")

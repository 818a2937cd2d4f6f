"""The kernel contract: what a fast backend may provide in place of a layer's lines.

A layer asks `kernel = fused(x, name)` (minivit/backend.py) and, given a function, calls it with the
signature below instead of running its own lines. `minivit/cpu/kernels.py` (numba, for NumPy arrays)
and `minivit/gpu/kernels.py` (CUDA, for CuPy arrays) implement these names; either may leave one out,
and the layer's lines then run. `tests/test_kernel_contract.py` checks both modules against this
table, and `fused` refuses a name that is not in it.

Each entry: the parameters, in order, and what comes back. The caches are the layers' own: a kernel
returns the same arrays the layer's lines would keep, so backward never needs to know who ran forward.
The constants shared by a formula and its kernels live here too, so each has one home.
"""
import math
from typing import NamedTuple


class Kernel(NamedTuple):
    params: tuple      # parameter names, in order (a kernel may add keyword parameters after them)
    returns: str       # what it gives back, in the layer's words
    takes: str = "float"   # the dtype of the first argument: "float" (float32/float64) or "uint8" (images)


KERNELS = {
    # layers/norm.py
    "layernorm_forward": Kernel(("x", "w", "b", "eps"), "y, (xhat, rstd, w)"),
    "layernorm_backward": Kernel(("dy", "cache"), "dx, dw, db"),
    # layers/activations.py: GELU(x + bias) and, with keep_cache, its derivative there; y may be written into out
    "gelu_forward": Kernel(("x", "approximate", "keep_cache", "out", "bias"), "y, dGELU/dx (or None)"),
    # layers/attention.py: softmax over the last axis; its backward times `scale`
    "softmax": Kernel(("x", "out"), "softmax(x)"),
    "softmax_backward": Kernel(("dp", "p", "out", "scale"), "scale * p * (dp - rowsum(dp * p))"),
    # layers/attention.py: softmax(q k^T scale) v without dropout or a logit bias
    "attention_forward": Kernel(("q", "k", "v", "scale"), "out, AttentionCache"),
    "attention_backward": Kernel(("dout", "cache"), "dq, dk, dv"),
    # layers/linear.py (b may be None: no bias)
    "linear_forward": Kernel(("x", "w", "b"), "y, (x, w)"),
    "linear_backward": Kernel(("dy", "cache"), "dx, dw, db"),
    # layers/conv.py (the CNN's and the hybrid stem's convolutions): each image's windows as columns, and back
    "conv_windows": Kernel(("x", "kh", "kw", "stride", "pad"), "cols (B, C*kh*kw, Ho*Wo)"),
    "conv_windows_adjoint": Kernel(("cols", "x_shape", "kh", "kw", "stride", "pad"), "dx (B, C, H, W)"),
    # layers/loss.py, integer labels
    "cross_entropy": Kernel(("logits", "labels", "label_smoothing"), "0-d mean loss, dlogits"),
    # train/optim.py: every tensor in one call
    "adamw_step": Kernel(("params", "grads", "decays", "m", "v", "lr", "b1", "b2", "bc1", "bc2", "eps",
                          "weight_decay"), "None (params, m, v updated in place)"),
    "sum_of_squares": Kernel(("arrays",), "0-d sum of every entry squared"),
    "scale_all": Kernel(("arrays", "s"), "None (each array multiplied by s in place)"),
    # train/batches.py: random crop and flip, then normalisation, with minivit.data.augment's draws
    "augment_normalize": Kernel(("images", "mean", "std", "dtype", "rng"), "x (B, C, H, W) normalised",
                                takes="uint8"),
}


class AttentionCache(NamedTuple):
    """What attention_backward needs from attention_forward, the same from the layer's lines and the CPU's
    kernel (layers/attention.py)."""
    q: object              # (..., N, d) the queries, unscaled
    k: object              # (..., N, d)
    v: object              # (..., N, d)
    probs: object          # (..., N, N) softmax(q k^T * scale): each row sums to 1
    probs_dropped: object  # (..., N, N) the probabilities after attention dropout (probs itself without)
    mask: object           # the dropout mask, or None
    out: object            # (..., N, d) the output, probs_dropped @ v
    scale: float


# The cubic coefficient of Hendrycks & Gimpel's tanh approximation of GELU (the layer's and both kernels')
GELU_TANH_C = 0.044715
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

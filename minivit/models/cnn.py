"""A small convolutional network, the ViT's foil for the paper's inductive-bias argument.

    x -> [conv3x3 -> ReLU -> maxpool 2x2] x (S-1) -> conv3x3 -> ReLU -> global average pool -> linear

A convolution looks only at a pixel's neighbourhood (locality) and uses the same kernel at
every position (weight sharing), so shifting the image shifts its feature map (translation
equivariance). The ViT has neither built in beyond its patch projection; the paper (section
4.2, Figure 3) argues that with enough data it learns them, and that on little data the
CNN's built-in bias wins. notebooks/10_inductive_bias.ipynb and benchmarks/data_size.py
train both with the same recipe (minivit/train/trainer.py) on 1k to 50k CIFAR-10 images.

Everything is minivit's own: conv2d and its backward (minivit/layers/conv.py, im2col), the ReLU of
the hybrid stem (minivit/layers/stem.py), the dense layer (minivit/layers/linear.py). Max pooling and the
global average pool are written out here. Derivation: docs/derivations/cnn.md.
"""
import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np

from ..backend import get_array_module, xp as backend_xp
from ..config import ConfigError
from ..layers.conv import conv2d_backward, conv2d_forward
from ..layers.linear import linear_backward, linear_forward
from ..layers.stem import relu_backward, relu_forward


@dataclass(frozen=True)
class CNNConfig:
    image_size: int = 32           # input height = width, pixels; a multiple of 2^(stages - 1)
    in_channels: int = 3           # C: colour channels of the input
    num_classes: int = 10          # K: classes of the head
    channels: tuple = (32, 64, 128)  # the width of each stage's 3x3 convolution; all but the last end in a 2x2 max pool

    family: ClassVar[str] = "cnn"       # how checkpoints tell it from a ViTConfig (minivit/models/families.py)
    head: ClassVar[str] = "classify"    # the trainer's objective: a CNN only classifies

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))  # JSON gives a list back
        for name in ("image_size", "in_channels", "num_classes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not self.channels or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                                        for c in self.channels):
            raise ConfigError(f"channels must be a non-empty list of positive integers, got {self.channels!r}")
        pools = 2 ** (len(self.channels) - 1)
        if self.image_size % pools:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of {pools} "
                              f"({len(self.channels) - 1} 2x2 max pools)")

    @property
    def tokens_per_image(self):
        """The trainer sizes its shards in tokens: a CNN counts as a patch-4 ViT of its image size."""
        return (self.image_size // 4) ** 2 + 1

    @property
    def random_masks(self):
        """A CNN draws nothing at random in its forward pass (no dropout)."""
        return False

    def to_dict(self):
        return {"family": self.family, **asdict(self)}

    @classmethod
    def from_dict(cls, d):
        d = {k: v for k, v in d.items() if k != "family"}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown CNN config field(s): {', '.join(unknown)}")
        return cls(**d)


def param_shapes(cfg):
    """conv.i.w (F, C, 3, 3) and conv.i.b (F,) per stage, head.w (F_last, K), head.b (K,)."""
    shapes, c = {}, cfg.in_channels
    for i, f in enumerate(cfg.channels):
        shapes[f"conv.{i}.w"], shapes[f"conv.{i}.b"] = (f, c, 3, 3), (f,)
        c = f
    shapes["head.w"], shapes["head.b"] = (c, cfg.num_classes), (cfg.num_classes,)
    return shapes


def count_params(cfg):
    return sum(math.prod(s) for s in param_shapes(cfg).values())


def init_params(cfg, seed=0, dtype="float32"):
    """He normal kernels (std sqrt(2 / fan_in): a ReLU follows each), zero biases, a zero head
    (as the ViT's: the first steps train the head alone). Drawn on the host, moved to the backend."""
    if not isinstance(cfg, CNNConfig):
        raise TypeError(f"cfg must be a CNNConfig, got {type(cfg).__name__}")
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.startswith("conv.") and name.endswith(".w"):
            params[name] = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[1:])), shape)
        else:
            params[name] = np.zeros(shape)
    xp = backend_xp()
    return {k: xp.asarray(v, dtype=dtype) for k, v in params.items()}


def maxpool2x2_forward(x):
    """x (B, C, H, W), H and W even -> y (B, C, H/2, W/2): the largest of each 2x2 window.

    The cache is which of the window's four pixels won (the first, on ties, as torch's
    F.max_pool2d): backward sends each output's gradient to that pixel alone.
    """
    B, C, H, W = x.shape
    win = x.reshape(B, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, H // 2, W // 2, 4)
    arg = win.argmax(axis=-1)                                        # (B, C, H/2, W/2): 0..3, row-major in the window
    y = get_array_module(x).take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return y, (arg, x.shape)


def maxpool2x2_backward(dy, cache):
    """dy (B, C, H/2, W/2) -> dx (B, C, H, W): dy at each window's winning pixel, zero elsewhere."""
    arg, (B, C, H, W) = cache
    xp = get_array_module(dy)
    dwin = xp.zeros((B, C, H // 2, W // 2, 4), dtype=dy.dtype)
    xp.put_along_axis(dwin, arg[..., None], dy[..., None], axis=-1)
    return dwin.reshape(B, C, H // 2, W // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(B, C, H, W)


def global_avg_pool_forward(x):
    """x (B, C, H, W) -> (B, C): each channel's mean over the positions."""
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool_backward(dy, shape):
    """dy (B, C) -> dx (B, C, H, W): every position receives dy / (H W)."""
    B, C, H, W = shape
    xp = get_array_module(dy)
    return xp.broadcast_to((dy / (H * W))[:, :, None, None], shape).copy()


def check_input(x, cfg):
    """A clear error unless x is a (B, C, H, W) floating batch of the config's size."""
    want = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if getattr(x, "ndim", None) != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"CNN input must be (B, {want[0]}, {want[1]}, {want[2]}), got {getattr(x, 'shape', type(x))}")
    if x.dtype.kind != "f":
        raise ValueError(f"CNN input must be floating point (normalised images), got dtype {x.dtype}")


def forward(params, x, cfg, train=False, rng=None, keep_cache=True):
    """x (B, C, H, W) -> logits (B, K), cache. (`train` and `rng` are unused: the CNN has no
    dropout; they keep the ViT's signature, so the trainer calls either the same way.)"""
    check_input(x, cfg)
    caches = []
    last = len(cfg.channels) - 1
    for i in range(len(cfg.channels)):
        x, c_conv = conv2d_forward(x, params[f"conv.{i}.w"], params[f"conv.{i}.b"], stride=1, pad=1)  # (B, F, H, W)
        x, c_relu = relu_forward(x)
        c_pool = None
        if i < last:
            x, c_pool = maxpool2x2_forward(x)                      # (B, F, H/2, W/2)
        caches.append((c_conv, c_relu, c_pool) if keep_cache else None)
    feats, c_gap = global_avg_pool_forward(x)                      # (B, F_last)
    logits, c_head = linear_forward(feats, params["head.w"], params["head.b"])  # (B, K)
    return logits, ((caches, c_gap, c_head) if keep_cache else None)


def backward(dlogits, cache):
    """dlogits (B, K) -> the gradient of every parameter, a dict with forward's keys."""
    caches, c_gap, c_head = cache
    grads = {}
    dfeats, grads["head.w"], grads["head.b"] = linear_backward(dlogits, c_head)  # (B, F_last)
    dx = global_avg_pool_backward(dfeats, c_gap)                   # (B, F_last, h, w)
    for i in reversed(range(len(caches))):
        c_conv, c_relu, c_pool = caches[i]
        if c_pool is not None:
            dx = maxpool2x2_backward(dx, c_pool)
        dx = relu_backward(dx, c_relu)
        dx, grads[f"conv.{i}.w"], grads[f"conv.{i}.b"] = conv2d_backward(dx, c_conv)
    return grads

"""The hybrid architecture's CNN stem (paper section 3.1), and the layers it needs.

"As an alternative to raw image patches, the input sequence can be formed from feature maps of
a CNN": the patch projection then cuts the CNN's feature map, not the image, into patches. The
paper's hybrids use the first stages of a ResNet-50 (R50+ViT-B/16: a 14x14 map of 1024
channels cut into 1x1 patches). Its ResNets follow BiT, with Group Normalization instead of
BatchNorm, so no statistics are carried between training and evaluation. minivit's stem is the
small version of that: `len(cfg.stem_channels)` layers of

    conv 3x3 (padding 1, stride s) -> GroupNorm -> ReLU

written with minivit's own im2col convolution. Each layer is a pure forward/backward pair;
derivations in docs/derivations/stem.md.
"""
from ..backend import get_array_module
from .conv import conv2d_backward, conv2d_forward


def relu_forward(x):
    """max(0, x); the cache is the mask of positive inputs, which is the whole derivative."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dy, mask):
    return dy * mask


def groupnorm_forward(x, w, b, groups, eps=1e-5):
    """x (B, C, H, W), w (C,), b (C,) -> y (B, C, H, W), as torch F.group_norm.

    The C channels fall into `groups` groups of C/G; each image's group is normalised over its
    (C/G, H, W) values, then every channel gets its own scale and shift:
    y = (x - mean_group) / sqrt(var_group + eps) * w_c + b_c. LayerNorm is the case of one group
    over the last axis; with G = C it is InstanceNorm.
    """
    xp = get_array_module(x)
    B, C, H, W = x.shape
    xg = x.reshape(B, groups, -1)                                  # (B, G, C/G*H*W)
    mean = xg.mean(axis=-1, keepdims=True)                         # (B, G, 1)
    xhat = xg - mean
    rstd = 1.0 / xp.sqrt((xhat * xhat).mean(axis=-1, keepdims=True) + eps)  # (B, G, 1)
    xhat = (xhat * rstd).reshape(B, C, H, W)                       # (B, C, H, W)
    y = xhat * w[:, None, None] + b[:, None, None]
    return y, (xhat, rstd, w, groups)


def groupnorm_backward(dy, cache):
    """dy (B, C, H, W) -> dx, dw (C,), db (C,).

    As LayerNorm's backward (docs/derivations/layernorm.md) within each group:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w_c, means over the group.
    """
    xhat, rstd, w, groups = cache
    B, C, H, W = dy.shape
    dw = (dy * xhat).sum(axis=(0, 2, 3))                           # (C,)
    db = dy.sum(axis=(0, 2, 3))                                    # (C,)
    g = (dy * w[:, None, None]).reshape(B, groups, -1)             # (B, G, C/G*H*W)
    xh = xhat.reshape(B, groups, -1)
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xh * (g * xh).mean(axis=-1, keepdims=True))
    return dx.reshape(B, C, H, W), dw, db


def stem_shapes(cfg):
    """Parameter shapes of the stem: stem.i.conv.w (F, C, 3, 3), stem.i.norm.{w, b} (F,)."""
    shapes, c = {}, cfg.in_channels
    for i, f in enumerate(cfg.stem_channels):
        # no conv bias: the GroupNorm shift that follows would cancel it
        shapes.update({f"stem.{i}.conv.w": (f, c, 3, 3), f"stem.{i}.norm.w": (f,), f"stem.{i}.norm.b": (f,)})
        c = f
    return shapes


def stem_forward(x, params, cfg):
    """x (B, C, H, W) -> feature map (B, F, H', W'); with no stem layers, x itself."""
    caches = []
    for i, (f, s) in enumerate(zip(cfg.stem_channels, cfg.stem_strides)):
        p = f"stem.{i}."
        zero_bias = get_array_module(x).zeros(f, dtype=x.dtype)
        x, c_conv = conv2d_forward(x, params[p + "conv.w"], zero_bias, stride=s, pad=1)  # (B, F, H/s, W/s)
        x, c_norm = groupnorm_forward(x, params[p + "norm.w"], params[p + "norm.b"], cfg.stem_groups)
        x, c_relu = relu_forward(x)
        caches.append((p, c_conv, c_norm, c_relu))
    return x, caches


def stem_backward(dx, caches, grads):
    """dx of the feature map -> writes the stem's gradients into `grads`."""
    for p, c_conv, c_norm, c_relu in reversed(caches):
        dx = relu_backward(dx, c_relu)
        dx, grads[p + "norm.w"], grads[p + "norm.b"] = groupnorm_backward(dx, c_norm)
        dx, grads[p + "conv.w"], _ = conv2d_backward(dx, c_conv)

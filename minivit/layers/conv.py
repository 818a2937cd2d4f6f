"""im2col / col2im and the convolution built on them; the ViT patch projection.

im2col lays every receptive field of a (B, C, H, W) image out as one row, so a
convolution becomes one matrix product. The ViT patch embedding is the special
case kernel = stride = patch size, padding 0: the windows tile the image without
overlap and each row of im2col is one flattened patch (paper eq. 1,
x_p in R^{N x (P^2 C)}). Derivation: docs/derivations/conv.md.

`conv2d_forward` keeps each image's windows apart, as the columns of a (C kh kw, Ho Wo)
matrix, and takes one product per image: its (F, Ho Wo) result is already the output's
(B, F, Ho, Wo) memory order. (On the CPU a kernel copies the windows through a table of pixel
indices instead of im2col's slices: minivit/cpu/kernels.py, pinned to these lines by
tests/test_cpu_kernels.py.)
"""
from ..backend import fused, get_array_module


def _out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def im2col(x, kh, kw, stride=1, pad=0):
    """x (B, C, H, W) -> cols (B*Ho*Wo, C*kh*kw), rows ordered (b, i, j), columns (c, u, v)."""
    xp = get_array_module(x)
    B, C, H, W = x.shape
    Ho, Wo = _out_size(H, kh, stride, pad), _out_size(W, kw, stride, pad)
    if kh == kw == stride and pad == 0 and H % kh == 0 and W % kw == 0:
        # Non-overlapping tiles: a reshape and a transpose, no copying loop.
        t = x.reshape(B, C, Ho, kh, Wo, kw).transpose(0, 2, 4, 1, 3, 5)  # (B, Ho, Wo, C, kh, kw)
        return t.reshape(B * Ho * Wo, C * kh * kw)
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x  # (B, C, H+2p, W+2p)
    cols = xp.empty((B, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for u in range(kh):          # one strided slice per kernel offset (u, v)
        for v in range(kw):
            cols[:, :, u, v] = xpad[:, :, u:u + stride * Ho:stride, v:v + stride * Wo:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(B * Ho * Wo, C * kh * kw)


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Adjoint of im2col: cols (B*Ho*Wo, C*kh*kw) -> (B, C, H, W).

    Where windows overlap, every column that read a pixel adds its value back
    into that pixel. Each (u, v) slice touches distinct pixels, and the offsets are
    summed one after another, so no index is written twice in one operation.
    """
    xp = get_array_module(cols)
    B, C, H, W = x_shape
    Ho, Wo = _out_size(H, kh, stride, pad), _out_size(W, kw, stride, pad)
    if kh == kw == stride and pad == 0 and H % kh == 0 and W % kw == 0:
        t = cols.reshape(B, Ho, Wo, C, kh, kw).transpose(0, 3, 1, 4, 2, 5)  # (B, C, Ho, kh, Wo, kw)
        return t.reshape(B, C, H, W)
    c6 = cols.reshape(B, Ho, Wo, C, kh, kw).transpose(0, 3, 4, 5, 1, 2)  # (B, C, kh, kw, Ho, Wo)
    xpad = xp.zeros((B, C, H + 2 * pad, W + 2 * pad), dtype=cols.dtype)
    for u in range(kh):
        for v in range(kw):
            xpad[:, :, u:u + stride * Ho:stride, v:v + stride * Wo:stride] += c6[:, :, u, v]
    return xpad[:, :, pad:pad + H, pad:pad + W]


def conv_windows(x, kh, kw, stride=1, pad=0):
    """x (B, C, H, W) -> cols (B, C*kh*kw, Ho*Wo): each image's im2col rows as columns, cols[n] = im2col(x[n:n+1]).T."""
    kernel = fused(x, "conv_windows")
    if kernel:  # on a CPU: one gather per image through a table of pixel indices (minivit/cpu/kernels.py)
        return kernel(x, kh, kw, stride, pad)
    B = x.shape[0]
    return im2col(x, kh, kw, stride, pad).reshape(B, -1, x.shape[1] * kh * kw).transpose(0, 2, 1)


def conv_windows_adjoint(cols, x_shape, kh, kw, stride=1, pad=0):
    """The adjoint of conv_windows: cols (B, C*kh*kw, Ho*Wo) -> (B, C, H, W), col2im of each image's columns."""
    kernel = fused(cols, "conv_windows_adjoint")
    if kernel:
        return kernel(cols, x_shape, kh, kw, stride, pad)
    return col2im(cols.transpose(0, 2, 1).reshape(-1, cols.shape[1]), x_shape, kh, kw, stride, pad)


def conv2d_forward(x, w, b, stride=1, pad=0):
    """x (B, C, H, W), w (F, C, kh, kw) as in torch F.conv2d, b (F,) -> y (B, F, Ho, Wo).

    The im2col product, image by image with the windows as columns: y[n] = w.reshape(F, -1) @ cols[n] + b,
    (F, C kh kw) @ (C kh kw, Ho Wo), whose (F, Ho Wo) result is already the output's memory order."""
    B, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Ho, Wo = _out_size(H, kh, stride, pad), _out_size(W, kw, stride, pad)
    cols = conv_windows(x, kh, kw, stride, pad)    # (B, C*kh*kw, Ho*Wo)
    y = w.reshape(F, -1) @ cols + b[:, None]       # (B, F, Ho*Wo): one product per image
    return y.reshape(B, F, Ho, Wo), (cols, x.shape, w, stride, pad)


def conv2d_backward(dy, cache):
    """dy (B, F, Ho, Wo) -> dx (B, C, H, W), dw (F, C, kh, kw), db (F,).

    The linear layer's backward with cols as its input, image by image: dw sums the images'
    dy[n] @ cols[n].T, and dcols[n] = w.reshape(F, -1).T @ dy[n] goes back through col2im."""
    cols, x_shape, w, stride, pad = cache
    F, C, kh, kw = w.shape
    dy3 = dy.reshape(dy.shape[0], F, -1)           # (B, F, Ho*Wo)
    db = dy3.sum(axis=(0, 2))                      # (F,)
    dw = (dy3 @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)  # (F, C, kh, kw)
    dcols = w.reshape(F, -1).T @ dy3               # (B, C*kh*kw, Ho*Wo)
    return conv_windows_adjoint(dcols, x_shape, kh, kw, stride, pad), dw, db


def patch_embed_forward(x, w, b):
    """The ViT patch projection: x (B, C, H, W), w (D, C, P, P), b (D,) -> tokens (B, N, D).

    A convolution with kernel = stride = P; its (B, D, H/P, W/P) output map is read
    row by row into N = (H/P)(W/P) tokens, the order timm and the paper use.
    For a 224x224x3 image and P = 16: 14x14x768 -> 196x768.
    """
    B = x.shape[0]
    D, _, P, _ = w.shape
    cols = im2col(x, P, P, stride=P)  # (B*N, C*P*P): one flattened patch per row
    tokens = cols @ w.reshape(D, -1).T + b  # (B*N, D)
    return tokens.reshape(B, -1, D), (cols, x.shape, w)


def patch_embed_backward(dtokens, cache, need_dx=True):
    """dtokens (B, N, D) -> dx (B, C, H, W), dw (D, C, P, P), db (D,).

    The model's input needs no gradient, so training passes need_dx=False and dx is None.
    """
    cols, x_shape, w = cache
    D, _, P, _ = w.shape
    d2 = dtokens.reshape(-1, D)                   # (B*N, D)
    db = d2.sum(axis=0)                           # (D,), as the dense layer's bias gradient
    dw = (d2.T @ cols).reshape(w.shape)           # (D, C, P, P)
    dx = col2im(d2 @ w.reshape(D, -1), x_shape, P, P, stride=P) if need_dx else None  # (B, C, H, W)
    return dx, dw, db

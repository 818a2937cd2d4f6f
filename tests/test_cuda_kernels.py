"""The fused CUDA kernels (minivit/gpu/kernels.py) against the NumPy code they replace.

Each kernel runs on CuPy arrays and is compared with the same layer run by NumPy on the
host: float64 to 1e-12 relative, float32 to 1e-5. Inputs are fresh random draws, with
shapes whose rows are not multiples of the 32-lane warp or the 8-row block. Without CuPy
and a GPU the whole module is skipped.
"""
import numpy as np
import pytest

import minivit as mv
from minivit import backend
from minivit.gpu import kernels as cuda_kernels
from minivit.layers.activations import gelu_backward, gelu_forward
from minivit.layers.attention import attention_backward, attention_forward, softmax, softmax_backward
from minivit.layers.loss import cross_entropy
from minivit.layers.norm import layernorm_backward, layernorm_forward
from minivit.train.optim import AdamW, clip_grad_norm, global_norm


def _gpu():
    try:
        return backend._import_cupy()
    except backend.BackendError:
        return None


cp = _gpu()
pytestmark = pytest.mark.skipif(cp is None, reason="needs CuPy and a CUDA GPU")
TOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def rel(a, b):
    a, b = backend.to_numpy(a).astype(np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def close(a, b, dtype, floor=0.0):
    """Relative error below the dtype's tolerance; floor: the smallest norm to measure it against
    (for references that are rounding noise around zero)."""
    a, b = backend.to_numpy(a).astype(np.float64), np.asarray(b, dtype=np.float64)
    err = np.linalg.norm(a - b) / max(np.linalg.norm(b), floor, 1e-300)
    assert a.shape == b.shape and err < TOL[dtype], (a.shape, b.shape, err)


@pytest.fixture(autouse=True)
def fused_on():
    backend.use_fused_kernels(True)
    yield
    backend.use_fused_kernels(True)


def test_the_layers_pick_the_cuda_kernels_for_cupy_arrays():
    from minivit.gpu import kernels
    assert backend.fused(cp.zeros(3, dtype=np.float32), "softmax") is kernels.softmax
    assert backend.fused(np.zeros(3, dtype=np.float32), "softmax") is not kernels.softmax  # the CPU's, or None
    assert backend.fused(cp.zeros(3, dtype=np.float16), "softmax") is None
    backend.use_fused_kernels(False)
    assert backend.fused(cp.zeros(3, dtype=np.float32), "softmax") is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 64), (2, 13, 768), (7, 1000), (1, 1, 20)])
def test_layernorm(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(shape[-1]).astype(dtype), rng.standard_normal(shape[-1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y_ref, c_ref = layernorm_forward(x, w, b, 1e-6)
    y, c = layernorm_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b), 1e-6)
    close(y, y_ref, dtype)
    close(c[0], c_ref[0], dtype)                    # xhat
    close(c[1], c_ref[1], dtype)                    # rstd
    for got, ref in zip(layernorm_backward(cp.asarray(dy), c), layernorm_backward(dy, c_ref)):
        close(got, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 17, 65, 197, 300])
def test_softmax_forward_backward_and_in_place(dtype, n):
    rng = np.random.default_rng(n)
    s = (rng.standard_normal((2, 3, 5, n)) * 4).astype(dtype)
    dp = rng.standard_normal(s.shape).astype(dtype)
    p_ref = softmax(s.copy())
    g = cp.asarray(s)
    close(softmax(g), p_ref, dtype)
    same = softmax(g, out=g)                        # in place, as attention_forward calls it
    assert same is g
    close(g, p_ref, dtype)
    close(softmax_backward(cp.asarray(dp), g), softmax_backward(dp, p_ref), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", [(1, 8), (33, 8), (65, 32), (197, 64)])
def test_attention_on_padded_rows_equals_numpy(dtype, n, d):
    """The GPU path stores the N x N matrices in rows padded to 4 entries and calls cuBLAS itself."""
    rng = np.random.default_rng(n)
    q, k, v, dout = (rng.standard_normal((2, 3, n, d)).astype(dtype) for _ in range(4))
    out_ref, c_ref = attention_forward(q, k, v)
    out, c = attention_forward(*(cp.asarray(a) for a in (q, k, v)))
    assert isinstance(c, cuda_kernels.AttentionCache)
    close(out, out_ref, dtype)
    grads, refs = attention_backward(cp.asarray(dout), c), attention_backward(dout, c_ref)
    if n == 1:  # the softmax of one logit is constant: dq = dk = 0 exactly (NumPy's are rounding noise)
        assert not cp.any(grads[0]) and not cp.any(grads[1])
        grads, refs = grads[2:], refs[2:]
    for got, ref in zip(grads, refs):
        close(got, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5), (16640, 128), (3, 1)])
def test_column_sums(dtype, shape):
    a = np.random.default_rng(shape[0]).standard_normal(shape).astype(dtype)
    close(cuda_kernels.column_sums(cp.asarray(a)), a.sum(axis=0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [((2, 7, 48), 40), ((5, 3), 1), ((300, 64), 256)])
def test_linear_by_direct_cublas_calls(dtype, shape):
    from minivit.layers.linear import linear_backward, linear_forward
    xs, n = shape
    rng = np.random.default_rng(n)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, (xs[-1], n), (n,)))
    dy = rng.standard_normal(xs[:-1] + (n,)).astype(dtype)
    y_ref, c_ref = linear_forward(x, w, b)
    y, c = linear_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b))
    close(y, y_ref, dtype)
    for got, ref in zip(linear_backward(cp.asarray(dy), c), linear_backward(dy, c_ref)):
        close(got, ref, dtype)
    # a strided input (the class token column of a batch), as the head receives it
    z = rng.standard_normal((4, 5, xs[-1])).astype(dtype)
    close(linear_forward(cp.asarray(z)[:, 0], cp.asarray(w), cp.asarray(b))[0], linear_forward(z[:, 0], w, b)[0], dtype)


def test_attention_with_dropout_or_bias_takes_the_general_path():
    rng = np.random.default_rng(2)
    q, k, v = (cp.asarray(rng.standard_normal((1, 2, 5, 4))) for _ in range(3))
    _, c = attention_forward(q, k, v, p_drop=0.5, rng=np.random.default_rng(0), train=True)
    assert not isinstance(c, cuda_kernels.AttentionCache)
    _, c = attention_forward(q, k, v, bias=cp.zeros((1, 2, 5, 5)))
    assert not isinstance(c, cuda_kernels.AttentionCache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["exact", "tanh"])
def test_gelu(dtype, form):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 9, 130)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y_ref, d_ref = gelu_forward(x, form)
    y, d = gelu_forward(cp.asarray(x), form)
    close(y, y_ref, dtype)
    close(d, d_ref, dtype)
    close(gelu_backward(cp.asarray(dy), d), gelu_backward(dy, d_ref), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_cross_entropy(dtype, smoothing, label_dtype):
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((37, 10)) * 5).astype(dtype)
    y = rng.integers(0, 10, 37).astype(label_dtype)
    loss_ref, dz_ref = cross_entropy(z, y, smoothing)
    loss, dz = cross_entropy(cp.asarray(z), cp.asarray(y), smoothing)
    assert loss.shape == ()
    close(loss, loss_ref, dtype)
    close(dz, dz_ref, dtype)


def test_cross_entropy_out_of_range_label_is_nan_and_check_labels_names_it():
    from minivit.layers.loss import check_labels
    z = cp.asarray(np.random.default_rng(4).standard_normal((4, 3)))
    y = cp.asarray(np.array([0, 1, 3, 2]))
    loss, _ = cross_entropy(z, y)
    assert np.isnan(float(loss))
    with pytest.raises(ValueError, match="out of range"):
        check_labels(y, 3)


def _grads_like(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(s).astype(dtype) for name, s in shapes.items()}


SHAPES = {"patch_embed.w": (8, 3, 2, 2), "patch_embed.b": (8,), "cls_token": (1, 1, 8), "pos_embed": (1, 5, 8),
          "blocks.0.attn.qkv.w": (8, 24), "blocks.0.norm1.w": (8,), "head.w": (8, 3), "head.b": (3,)}


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_norm_and_clip(dtype):
    host = _grads_like(SHAPES, dtype, 5)
    dev = {k: cp.asarray(v) for k, v in host.items()}
    assert abs(global_norm(dev) - global_norm(host)) <= TOL[dtype] * global_norm(host)
    n_ref, n = clip_grad_norm(host, 1.0), clip_grad_norm(dev, 1.0)
    assert abs(n - n_ref) <= TOL[dtype] * n_ref
    for k in host:
        close(dev[k], host[k], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_one_launch_equals_the_loop_and_keeps_its_state_dict(dtype):
    host_p = _grads_like(SHAPES, dtype, 6)
    dev_p = {k: cp.asarray(v) for k, v in host_p.items()}
    o_host, o_dev = AdamW(lr=1e-2, weight_decay=0.1), AdamW(lr=1e-2, weight_decay=0.1)
    for step in range(3):
        g = _grads_like(SHAPES, dtype, 10 + step)
        o_host.step(host_p, g)
        o_dev.step(dev_p, {k: cp.asarray(v) for k, v in g.items()})
        o_host.lr = o_dev.lr = 1e-2 * (0.5 ** (step + 1))
    for k in host_p:
        close(dev_p[k], host_p[k], dtype)
        close(o_dev.m[k], o_host.m[k], dtype)
        close(o_dev.v[k], o_host.v[k], dtype)
    # the state survives a state_dict round trip into a fresh optimiser, which goes on the same way
    o_new = AdamW(lr=o_dev.lr, weight_decay=0.1)
    o_new.load_state_dict({k: (v.copy() if hasattr(v, "copy") else v) for k, v in o_dev.state_dict().items()})
    g = _grads_like(SHAPES, dtype, 20)
    p2 = {k: v.copy() for k, v in dev_p.items()}
    o_dev.step(dev_p, {k: cp.asarray(v) for k, v in g.items()})
    o_new.step(p2, {k: cp.asarray(v) for k, v in g.items()})
    for k in p2:
        assert rel(p2[k], backend.to_numpy(dev_p[k])) == 0.0


@pytest.mark.parametrize("overrides", [{}, {"gelu": "tanh", "pool": "gap", "pos_embed": "relative"}])
def test_whole_model_fused_equals_unfused_and_numpy(overrides):
    """forward, loss and every gradient in float64: fused CuPy, unfused CuPy and NumPy agree."""
    cfg = mv.ViTConfig.preset("test", **overrides)
    rng = np.random.default_rng(7)
    host = {k: backend.to_numpy(v) + rng.standard_normal(v.shape) * 0.05  # non-zero head and class token
            for k, v in mv.init_params(cfg, seed=0, dtype="float64").items()}
    x = rng.standard_normal((5, cfg.in_channels, cfg.image_size, cfg.image_size))
    y = rng.integers(0, cfg.num_classes, 5)

    def run(params, xx, yy):
        logits, cache = mv.forward(params, xx, cfg)
        loss, dlogits = cross_entropy(logits, yy, 0.1)
        return float(loss), mv.backward(dlogits, cache)

    ref_loss, ref_grads = run(host, x, y)
    dev = {k: cp.asarray(v) for k, v in host.items()}
    for on in (True, False):
        backend.use_fused_kernels(on)
        loss, grads = run(dev, cp.asarray(x), cp.asarray(y))
        assert abs(loss - ref_loss) < 1e-12 * abs(ref_loss)
        for k in ref_grads:
            assert rel(grads[k], ref_grads[k]) < 1e-10, (on, k)


def test_augment_on_the_device_draws_the_same_batch():
    from minivit.data import augment
    images = np.random.default_rng(8).integers(0, 256, (6, 3, 8, 8)).astype(np.uint8)
    host = augment(images, np.random.default_rng(9))
    dev = augment(cp.asarray(images), np.random.default_rng(9))
    assert isinstance(dev, cp.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(dev), host)


def test_randaugment_on_the_device_is_the_host_result():
    """Every RandAugment operation, and random erasing, on CuPy gives NumPy's images."""
    from minivit.data import randaugment as ra
    images = np.random.default_rng(8).integers(0, 256, (12, 3, 32, 32)).astype(np.uint8)
    sign = np.where(np.arange(12) % 2, 1.0, -1.0)
    for name in ra.OPS:
        dev = ra.apply_op(name, cp.asarray(images), 7.0, sign)
        assert isinstance(dev, cp.ndarray), name
        np.testing.assert_array_equal(backend.to_numpy(dev), ra.apply_op(name, images, 7.0, sign), err_msg=name)
    dev = ra.rand_augment(cp.asarray(images), np.random.default_rng(3), 3, 9.0)
    np.testing.assert_array_equal(backend.to_numpy(dev), ra.rand_augment(images, np.random.default_rng(3), 3, 9.0))
    x = np.random.default_rng(4).standard_normal((12, 3, 32, 32)).astype(np.float32)
    dev = ra.random_erase(cp.asarray(x), np.random.default_rng(5), 0.5)
    np.testing.assert_array_equal(backend.to_numpy(dev), ra.random_erase(x, np.random.default_rng(5), 0.5))


@pytest.mark.parametrize("augment,strong", [(True, False), (False, False), (True, True)])
def test_the_trainers_batch_on_the_gpu_is_the_numpy_batch(augment, strong):
    """make_batch on CuPy (one crop-flip-normalise kernel) gives NumPy's batch, bit for bit;
    strong: with RandAugment before it and random erasing after."""
    from minivit.data import Split
    from minivit.train import TrainConfig, make_batch
    rng = np.random.default_rng(11)
    split = Split(rng.integers(0, 256, (40, 3, 8, 8)).astype(np.uint8), rng.integers(0, 5, 40))
    extra = dict(randaugment=2, random_erasing=0.5) if strong else {}
    tcfg = TrainConfig(batch_size=16, augment=augment, seed=3, **extra)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    try:
        backend.use_backend("numpy")
        x_ref, y_ref = make_batch(split, tcfg, mean, std, epoch=1, index=1, step=7)
        backend.use_backend("cupy")
        x, y = make_batch(split, tcfg, mean, std, epoch=1, index=1, step=7)
    finally:
        backend.use_backend("numpy")
    assert isinstance(x, cp.ndarray)
    np.testing.assert_array_equal(backend.to_numpy(x), x_ref)
    np.testing.assert_array_equal(backend.to_numpy(y), y_ref)

"""PyTorch as an oracle: every layer, the whole model and the optimisers in float64.

Skipped when torch is not installed; CI installs the CPU build so these run."""
import os
import sys

import numpy as np
import pytest

import minivit as mv
from minivit.train import optim
from helpers import rel_error

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from torch_vit import drop_path as torch_drop_path, torch_vit  # noqa: E402  the same reference model the benchmark trains
F = torch.nn.functional
TOL = 1e-10
rng = np.random.default_rng(0)


def T(a, grad=True):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def randn(*shape):
    return rng.standard_normal(shape)


def agree(ours, theirs):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    assert np.shape(ours) == np.shape(theirs)
    assert rel_error(ours, theirs) < TOL, rel_error(ours, theirs)


def test_linear():
    x, w, b = randn(2, 3, 5), randn(5, 4), randn(4)
    y, cache = mv.linear_forward(x, w, b)
    tx, tw, tb = T(x), T(w.T), T(b)
    ty = F.linear(tx, tw, tb)
    R = randn(*y.shape)
    ty.backward(T(R, False))
    dx, dw, db = mv.linear_backward(R, cache)
    agree(y, ty); agree(dx, tx.grad); agree(dw, tw.grad.T); agree(db, tb.grad)


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 0), (2, 2), (4, 0)])
def test_conv2d(stride, pad):
    x, w, b = randn(2, 3, 9, 8), randn(5, 3, 4, 4), randn(5)
    y, cache = mv.conv2d_forward(x, w, b, stride, pad)
    tx, tw, tb = T(x), T(w), T(b)
    ty = F.conv2d(tx, tw, tb, stride=stride, padding=pad)
    R = randn(*y.shape)
    ty.backward(T(R, False))
    dx, dw, db = mv.conv2d_backward(R, cache)
    agree(y, ty); agree(dx, tx.grad); agree(dw, tw.grad); agree(db, tb.grad)


def test_layernorm():
    x, w, b = randn(3, 4, 7) * 2 + 1, randn(7), randn(7)
    y, cache = mv.layernorm_forward(x, w, b, 1e-6)
    tx, tw, tb = T(x), T(w), T(b)
    ty = F.layer_norm(tx, (7,), tw, tb, 1e-6)
    R = randn(*y.shape)
    ty.backward(T(R, False))
    dx, dw, db = mv.layernorm_backward(R, cache)
    agree(y, ty); agree(dx, tx.grad); agree(dw, tw.grad); agree(db, tb.grad)


@pytest.mark.parametrize("approximate,torch_name", [("exact", "none"), ("tanh", "tanh")])
def test_gelu(approximate, torch_name):
    x = randn(5, 6) * 3
    y, cache = mv.gelu_forward(x, approximate)
    tx = T(x)
    ty = F.gelu(tx, approximate=torch_name)
    R = randn(*y.shape)
    ty.backward(T(R, False))
    agree(y, ty); agree(mv.gelu_backward(R, cache), tx.grad)


def test_attention_against_sdpa():
    q, k, v = randn(2, 3, 6, 4), randn(2, 3, 6, 4), randn(2, 3, 6, 4)
    y, cache = mv.attention_forward(q, k, v)
    tq, tk, tv = T(q), T(k), T(v)
    ty = F.scaled_dot_product_attention(tq, tk, tv)
    R = randn(*y.shape)
    ty.backward(T(R, False))
    dq, dk, dv = mv.attention_backward(R, cache)
    agree(y, ty); agree(dq, tq.grad); agree(dk, tk.grad); agree(dv, tv.grad)


def test_mhsa_against_nn_multiheadattention():
    D, H = 8, 2
    x, wq, bq, wp, bp = randn(2, 5, D), randn(D, 3 * D) * 0.3, randn(3 * D), randn(D, D), randn(D)
    y, cache = mv.mhsa_forward(x, wq, bq, wp, bp, H)
    mha = torch.nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(wq.T))
        mha.in_proj_bias.copy_(torch.tensor(bq))
        mha.out_proj.weight.copy_(torch.tensor(wp.T))
        mha.out_proj.bias.copy_(torch.tensor(bp))
    tx = T(x)
    ty, _ = mha(tx, tx, tx, need_weights=False)
    R = randn(*y.shape)
    ty.backward(T(R, False))
    dx, dwq, dbq, dwp, dbp, drel = mv.mhsa_backward(R, cache)
    assert drel is None                          # no relative table: the same six fields, the last empty
    agree(y, ty); agree(dx, tx.grad)
    agree(dwq, mha.in_proj_weight.grad.T); agree(dbq, mha.in_proj_bias.grad)
    agree(dwp, mha.out_proj.weight.grad.T); agree(dbp, mha.out_proj.bias.grad)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(smoothing):
    z, y = randn(6, 10) * 5, rng.integers(0, 10, 6)
    loss, dz = mv.cross_entropy(z, y, smoothing)
    tz = T(z)
    tl = F.cross_entropy(tz, torch.tensor(y), label_smoothing=smoothing)
    tl.backward()
    agree(loss, tl); agree(dz, tz.grad)


@pytest.mark.parametrize("overrides", [dict(), dict(pool="gap", gelu="tanh"), dict(pos_embed="sincos"),
                                       dict(layer_scale=0.1)],
                         ids=["token-exact", "gap-tanh", "sincos", "layerscale"])
def test_whole_model_forward_and_backward(overrides):
    cfg = mv.ViTConfig.preset("test", dim=12, heads=3, **overrides)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in mv.init_params(cfg, dtype="float64").items()}
    x, y = randn(3, 3, 8, 8), np.array([0, 4, 2])
    logits, cache = mv.forward(params, x, cfg)
    loss, dlogits = mv.cross_entropy(logits, y, 0.1)
    grads = mv.backward(dlogits, cache)
    sd = {k: T(v) for k, v in mv.to_timm(params, cfg).items()}
    tlogits = torch_vit(sd, T(x, False), cfg)
    tloss = F.cross_entropy(tlogits, torch.tensor(y), label_smoothing=0.1)
    tloss.backward()
    agree(logits, tlogits); agree(loss, tloss)
    ours = mv.to_timm(grads, cfg)  # the same conversion maps gradient dicts
    for key, t in sd.items():
        if key == "pos_embed" and cfg.pos_embed == "sincos":
            continue  # fixed, not a parameter
        assert rel_error(ours[key], t.grad.numpy()) < TOL, key


def test_peer_drop_path_drops_whole_images():
    """The training peer's stochastic depth (benchmarks/torch_vit.py): each image's branch is kept
    whole, scaled by 1/(1 - p), or dropped whole; without a generator it is the identity."""
    branch = torch.rand(400, 5, 4, dtype=torch.float64) + 1
    out = torch_drop_path(branch, 0.25, torch.Generator().manual_seed(0))
    scale = (out / branch).reshape(400, -1)
    assert torch.allclose(scale, scale[:, :1].expand_as(scale), rtol=1e-15, atol=0)   # one factor per image
    kept = scale[:, 0] > 0
    assert torch.allclose(scale[kept], torch.tensor(1 / 0.75, dtype=torch.float64))
    assert 0.68 < kept.double().mean() < 0.82                             # about 3 in 4 kept
    assert torch.equal(torch_drop_path(branch, 0.25, None), branch)


def _tiny_problem():
    cfg = mv.ViTConfig.preset("test")
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in mv.init_params(cfg, dtype="float64").items()}
    grads_seq = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    return params, grads_seq


def _torch_copy(params, weight_decay):
    """Torch copies of params, in two groups split by minivit's decay rule."""
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    decay = [p for k, p in tparams.items() if optim.decays(k, params[k])]
    no_decay = [p for k, p in tparams.items() if not optim.decays(k, params[k])]
    assert decay and no_decay
    return tparams, [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _torch_step(topt, tparams, grads):
    for k, p in tparams.items():
        p.grad = torch.tensor(grads[k])
    topt.step()


def _assert_same_params(params, tparams):
    for k in params:
        assert rel_error(params[k], tparams[k].detach().numpy()) < TOL, k


def test_adamw_against_torch_over_several_steps():
    params, grads_seq = _tiny_problem()
    tparams, groups = _torch_copy(params, 0.05)
    topt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    opt = mv.AdamW(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    for step, grads in enumerate(grads_seq):
        lr = 1e-2 * (0.5 + step / 10)  # a changing learning rate, as a schedule sets it
        opt.lr = lr
        for group in topt.param_groups:
            group["lr"] = lr
        opt.step(params, grads)
        _torch_step(topt, tparams, grads)
    _assert_same_params(params, tparams)


def test_sgd_against_torch():
    params, grads_seq = _tiny_problem()
    tparams, groups = _torch_copy(params, 1e-3)
    topt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    opt = mv.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)
    for grads in grads_seq:
        opt.step(params, grads)
        _torch_step(topt, tparams, grads)
    _assert_same_params(params, tparams)


def test_clip_grad_norm_against_torch():
    grads = {"a": randn(3, 4), "b": randn(5)}
    tgrads = [torch.tensor(grads["a"].copy(), requires_grad=True), torch.tensor(grads["b"].copy(), requires_grad=True)]
    for t, k in zip(tgrads, grads):
        t.grad = torch.tensor(grads[k].copy())
    tnorm = torch.nn.utils.clip_grad_norm_(tgrads, 1.0)
    norm = mv.clip_grad_norm(grads, 1.0)
    assert rel_error(norm, tnorm.item()) < TOL
    agree(grads["a"], tgrads[0].grad); agree(grads["b"], tgrads[1].grad)


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_groupnorm(groups):
    x, w, b = randn(2, 6, 4, 5) * 2 + 1, randn(6), randn(6)
    y, cache = mv.layers.stem.groupnorm_forward(x, w, b, groups)
    tx, tw, tb = T(x), T(w), T(b)
    ty = F.group_norm(tx, groups, tw, tb, eps=1e-5)
    R = randn(*y.shape)
    ty.backward(T(R, False))
    dx, dw, db = mv.layers.stem.groupnorm_backward(R, cache)
    agree(y, ty); agree(dx, tx.grad); agree(dw, tw.grad); agree(db, tb.grad)


def test_smaller_images_and_patchdropout_as_the_peer_computes_them():
    """Progressive resizing and PatchDropout against PyTorch: a 32x32 model's weights on 16x16 images, the
    position table resampled by F.interpolate(bilinear, align_corners=True), a quarter of the patches
    dropped by the indices minivit's per-image streams draw; logits and every gradient, in float64."""
    from dataclasses import replace
    from minivit.layers.resample import resize_batch
    from minivit.train.random_streams import ImageStreams
    cfg = mv.ViTConfig(image_size=32, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=32,
                       patch_dropout=0.25)
    small = replace(cfg, image_size=16)
    params = {k: v.astype(np.float64) for k, v in mv.init_params(cfg, seed=3).items()}
    params["head.w"] = randn(*params["head.w"].shape) * 0.1
    x = resize_batch(randn(3, 3, 32, 32), 16)
    y = np.array([0, 4, 2])
    logits, cache = mv.forward(params, x, small, train=True, rng=ImageStreams(7, 2, 0, 3))
    grads = mv.backward(mv.cross_entropy(logits, y)[1], cache)
    n, k = small.num_patches, int(round(0.75 * small.num_patches))
    keep = np.sort(np.argsort(ImageStreams(7, 2, 0, 3).random((3, n)), axis=1)[:, :k], axis=1)
    sd = {key: T(v) for key, v in mv.to_timm(params, cfg).items()}
    out = torch_vit(sd, T(x, grad=False), cfg, keep=torch.from_numpy(keep))
    agree(logits, out)
    F.cross_entropy(out, torch.from_numpy(y)).backward()
    theirs = mv.from_timm({key: v.grad.numpy() for key, v in sd.items()}, cfg)
    for key in params:
        agree(grads[key], theirs[key])

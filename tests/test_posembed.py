"""Position-embedding variants (paper Appendix D.4): what each adds, and the whole model against PyTorch."""
import numpy as np
import pytest

import minivit as mv
from minivit.train import optim
from minivit.config import ConfigError
from helpers import rel_error

rng = np.random.default_rng(0)


def params_for(cfg, seed=0):
    p = mv.init_params(cfg, seed=seed, dtype="float64")
    r = np.random.default_rng(seed + 1)
    return {k: v + 0.1 * r.standard_normal(v.shape) for k, v in p.items()}


def test_parameters_of_each_variant():
    base = mv.ViTConfig.preset("test")        # grid 2, dim 8, depth 2
    g, D, N = base.grid, base.dim, base.num_patches
    shapes = lambda **kw: {k: v for k, v in mv.param_shapes(mv.ViTConfig.preset("test", **kw)).items() if "pos_embed" in k}
    assert shapes(pos_embed="learned") == {"pos_embed": (1, N + 1, D)}
    assert shapes(pos_embed="learned2d") == {"pos_embed_row": (g, D // 2), "pos_embed_col": (g, D // 2)}
    assert shapes(pos_embed="sincos") == {} and shapes(pos_embed="none") == {}
    assert shapes(pos_embed="learned", pos_embed_every_layer=True) == {f"blocks.{i}.pos_embed": (1, N + 1, D) for i in range(2)}
    with pytest.raises(ConfigError, match="needs a position embedding"):
        mv.ViTConfig.preset("test", pos_embed="none", pos_embed_every_layer=True)
    assert shapes(pos_embed="relative") == {f"blocks.{i}.attn.pos_embed_rel": (base.heads, 2 * (N + 1) - 1, D // base.heads)
                                            for i in range(2)}
    with pytest.raises(ConfigError, match="one of learned, learned2d, sincos, relative, none"):
        mv.ViTConfig.preset("test", pos_embed="rope")
    with pytest.raises(ConfigError, match="not pos_embed='relative'"):
        mv.ViTConfig.preset("test", pos_embed="relative", pos_embed_every_layer=True)
    # none of them is weight-decayed
    for kw in (dict(pos_embed="learned2d", pos_embed_every_layer=True), dict(pos_embed="relative")):
        p = mv.init_params(mv.ViTConfig.preset("test", **kw))
        assert not any(optim.decays(k, v) for k, v in p.items() if "pos_embed" in k)


def test_relative_logits_pick_the_offset_embedding():
    """bias[b, h, i, j] = qs[b, h, i] . table[h, i - j + T - 1], checked entry by entry."""
    B, H, T, d = 2, 3, 5, 4
    qs, table = rng.standard_normal((B, H, T, d)), rng.standard_normal((H, 2 * T - 1, d))
    bias, cache = mv.layers.posembed.relpos_forward(qs, table)
    for b, h, i, j in np.ndindex(B, H, T, T):
        assert abs(bias[b, h, i, j] - qs[b, h, i] @ table[h, i - j + T - 1]) < 1e-12
    R = rng.standard_normal(bias.shape)
    dqs, dtable = mv.layers.posembed.relpos_backward(R, cache)
    from helpers import check_grads
    f = lambda: float((mv.layers.posembed.relpos_forward(qs, table)[0] * R).sum())
    check_grads(f, {"qs": qs, "table": table}, {"qs": dqs, "table": dtable})


def test_learned2d_table_is_row_and_column_halves():
    cfg = mv.ViTConfig.preset("test", image_size=12, pos_embed="learned2d")   # a 3x3 grid
    p = params_for(cfg)
    z = np.zeros((1, cfg.num_patches + 1, cfg.dim))
    out, _ = mv.layers.posembed.pos_forward(z, p, cfg)
    table = out[0]
    half = cfg.dim // 2
    assert np.all(table[0] == 0)                                   # the class token: no position
    for r in range(3):
        for c in range(3):                                         # patch (r, c) is token 1 + 3 r + c
            np.testing.assert_array_equal(table[1 + 3 * r + c], np.concatenate([p["pos_embed_row"][r], p["pos_embed_col"][c]]))


def test_without_positions_the_model_ignores_patch_order():
    """Attention treats tokens as a set: with pos_embed='none', shuffling the patches changes nothing."""
    cfg = mv.ViTConfig.preset("test", image_size=12, pos_embed="none")
    p = params_for(cfg)
    x = rng.standard_normal((2, 3, 12, 12))
    cols = mv.im2col(x, 4, 4, stride=4)                         # (B*9, 48)
    perm = np.concatenate([b * 9 + rng.permutation(9) for b in range(2)])
    shuffled = mv.col2im(cols[perm], x.shape, 4, 4, stride=4)
    np.testing.assert_allclose(mv.forward(p, shuffled, cfg)[0], mv.forward(p, x, cfg)[0], rtol=1e-12)
    learned = mv.ViTConfig.preset("test", image_size=12)
    q = params_for(learned)
    assert not np.allclose(mv.forward(q, shuffled, learned)[0], mv.forward(q, x, learned)[0])


def torch_logits_and_grads(params, x, y, cfg):
    """The ViT in PyTorch on minivit's own parameter names, every position variant, autograd for the gradients."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    B, D, H, g = x.shape[0], cfg.dim, cfg.heads, cfg.grid
    d = D // H

    def table(prefix):
        if cfg.pos_embed == "learned":
            return P[prefix + "pos_embed"]
        if cfg.pos_embed == "learned2d":
            rows = P[prefix + "pos_embed_row"][:, None, :].expand(g, g, D // 2)
            cols = P[prefix + "pos_embed_col"][None, :, :].expand(g, g, D // 2)
            grid = torch.cat([rows, cols], 2).reshape(1, g * g, D)
            return torch.cat([torch.zeros(1, 1, D, dtype=grid.dtype), grid], 1)
        if cfg.pos_embed == "sincos":
            return torch.tensor(mv.sincos_pos_embed(cfg, dtype="float64"))
        return 0.0

    f = torch.tensor(x)
    for i, s in enumerate(cfg.stem_strides):                         # the hybrid's stem (paper 3.1)
        f = F.conv2d(f, P[f"stem.{i}.conv.w"], stride=s, padding=1)
        f = F.relu(F.group_norm(f, cfg.stem_groups, P[f"stem.{i}.norm.w"], P[f"stem.{i}.norm.b"], eps=1e-5))
    t = F.conv2d(f, P["patch_embed.w"], P["patch_embed.b"], stride=cfg.patch_size).flatten(2).transpose(1, 2)
    t = torch.cat([P["cls_token"].expand(B, -1, -1), t], 1)
    if not cfg.pos_embed_every_layer:
        t = t + table("")
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        if cfg.pos_embed_every_layer:
            t = t + table(p)
        h = F.layer_norm(t, (D,), P[p + "norm1.w"], P[p + "norm1.b"], cfg.ln_eps)
        q, k, v = (h @ P[p + "attn.qkv.w"] + P[p + "attn.qkv.b"]).reshape(B, -1, 3, H, d).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / d ** 0.5                      # (B, H, T, T)
        if cfg.pos_embed == "relative":                                # q . r[i - j], as the paper's relative attention
            T = logits.shape[-1]
            full = (q / d ** 0.5) @ P[p + "attn.pos_embed_rel"].transpose(-1, -2)   # (B, H, T, 2T-1)
            offset = (torch.arange(T)[:, None] - torch.arange(T)[None, :] + T - 1).expand(B, H, T, T)
            logits = logits + torch.gather(full, -1, offset)
        h = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(B, -1, D)
        t = t + h @ P[p + "attn.proj.w"] + P[p + "attn.proj.b"]
        h = F.layer_norm(t, (D,), P[p + "norm2.w"], P[p + "norm2.b"], cfg.ln_eps)
        h = F.gelu(h @ P[p + "mlp.fc1.w"] + P[p + "mlp.fc1.b"])
        t = t + h @ P[p + "mlp.fc2.w"] + P[p + "mlp.fc2.b"]
    t = F.layer_norm(t, (D,), P["norm.w"], P["norm.b"], cfg.ln_eps)
    pooled = t[:, 0] if cfg.pool == "token" else t[:, 1:].mean(1)
    logits = pooled @ P["head.w"] + P["head.b"]
    F.cross_entropy(logits, torch.tensor(y)).backward()
    return logits.detach().numpy(), {k: v.grad.numpy() for k, v in P.items()}


HYBRID = dict(stem_channels=(4, 8), stem_strides=(1, 2), stem_groups=2)  # 24x24 -> 12x12 map -> 3x3 patches


@pytest.mark.parametrize("variant,every,stem", [("learned", False, {}), ("learned2d", False, {}), ("sincos", False, {}),
                                                ("none", False, {}), ("relative", False, {}), ("learned", True, {}),
                                                ("learned2d", True, {}), ("sincos", True, {}), ("learned", False, HYBRID)])
def test_whole_model_against_pytorch(variant, every, stem):
    size = 24 if stem else 12
    cfg = mv.ViTConfig.preset("test", image_size=size, pos_embed=variant, pos_embed_every_layer=every, **stem)
    params = params_for(cfg)
    x, y = rng.standard_normal((3, 3, size, size)), np.array([0, 3, 4])
    logits, cache = mv.forward(params, x, cfg)
    grads = mv.backward(mv.cross_entropy(logits, y)[1], cache)
    t_logits, t_grads = torch_logits_and_grads(params, x, y, cfg)
    assert rel_error(logits, t_logits) < 1e-10
    assert set(grads) == set(t_grads)
    for k in grads:
        assert rel_error(grads[k], t_grads[k]) < 1e-10, k

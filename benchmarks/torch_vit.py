"""A reference ViT in PyTorch, written from timm's state_dict layout.

The oracle of tests/test_torch_oracle.py and the model of benchmarks/train_torch.py:
pre-LN blocks, fused qkv, exact or tanh GELU, token or mean pooling, LayerScale gains when the
state dict has them, and (for the training peer) stochastic depth, as minivit.
"""
import torch
import torch.nn.functional as F

from minivit.models.block import drop_path_rate


def drop_path(branch, p, generator):
    """Stochastic depth as minivit's drop_path_forward: each image's branch dropped with probability
    p, kept ones scaled by 1/(1 - p); the masks come from torch's own generator."""
    if p == 0.0 or generator is None:
        return branch
    keep = (torch.rand(branch.shape[0], generator=generator) >= p).to(branch.dtype) / (1.0 - p)
    return branch * keep.view(-1, *([1] * (branch.dim() - 1)))


def residual(t, branch, gamma, rate, generator):
    """t + drop_path(gamma * branch); without a LayerScale gain (gamma None) no multiply is added,
    so the speed benchmarks time the same step as before."""
    if gamma is not None:
        branch = gamma * branch
    return t + drop_path(branch, rate, generator)


def pos_table(pos_embed, g):
    """The learned table (1, G*G + 1, D) at the batch's grid g: the patch rows resampled bilinearly with
    aligned corners (minivit's layers/resample.py, for progressive resizing); itself at g = G."""
    G = int(round((pos_embed.shape[1] - 1) ** 0.5))
    if g == G:
        return pos_embed
    grid = pos_embed[:, 1:].reshape(1, G, G, -1).permute(0, 3, 1, 2)          # (1, D, G, G)
    small = F.interpolate(grid, size=(g, g), mode="bilinear", align_corners=True)
    return torch.cat([pos_embed[:, :1], small.permute(0, 2, 3, 1).reshape(1, g * g, -1)], dim=1)


def torch_vit(sd, x, cfg, generator=None, keep=None):
    """sd: timm-style dict of torch tensors; x (B, C, H, W) tensor -> logits (B, K).
    generator: a torch.Generator turns stochastic depth (cfg.drop_path) on, for training.
    keep: (B, K) indices of the patches each image keeps (PatchDropout), drawn by the caller.
    Images smaller than cfg.image_size use the position table resampled to their grid."""
    B, D, H = x.shape[0], cfg.dim, cfg.heads
    d = D // H
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.patch_size)
    g = t.shape[-1]
    t = t.flatten(2).transpose(1, 2)                                   # (B, N, D)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], dim=1) + pos_table(sd["pos_embed"], g)
    if keep is not None:                                               # PatchDropout: the class token, then the kept patches
        t = torch.cat([t[:, :1], torch.gather(t[:, 1:], 1, keep[:, :, None].expand(-1, -1, D))], dim=1)
    N = t.shape[1]
    gelu = "none" if cfg.gelu == "exact" else "tanh"
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        rate = drop_path_rate(cfg, i)                                  # linear over depth, as minivit
        h = F.layer_norm(t, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], cfg.ln_eps)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        t = residual(t, F.linear(h, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"]), sd.get(p + "ls1.gamma"),
                     rate, generator)
        h = F.layer_norm(t, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], cfg.ln_eps)
        h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]), approximate=gelu)
        t = residual(t, F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"]), sd.get(p + "ls2.gamma"),
                     rate, generator)
    t = F.layer_norm(t, (D,), sd["norm.weight"], sd["norm.bias"], cfg.ln_eps)
    pooled = t[:, 0] if cfg.pool == "token" else t[:, 1:].mean(dim=1)
    return F.linear(pooled, sd["head.weight"], sd["head.bias"])


def torch_train_step(cfg, x, y, device="cpu", bf16=False):
    """The peer's training step, as a closure step(i): forward, label-smoothed cross-entropy,
    backward, clipping to norm 1, torch.optim.AdamW, reading the loss back. Parameters start
    from minivit's initialisation (seed 0); x, y are NumPy arrays. bf16: under torch.autocast."""
    import minivit as mv
    sd = {k: torch.tensor(v, device=device, requires_grad=True)
          for k, v in mv.to_timm(mv.init_params(cfg, seed=0), cfg).items()}
    opt = torch.optim.AdamW(list(sd.values()), lr=1e-3, weight_decay=0.05)
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def step(i):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(torch_vit(sd, tx, cfg), ty, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(sd.values()), 1.0)
        opt.step()
        loss.item()
    return step

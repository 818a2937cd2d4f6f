"""A reference ViT in PyTorch, written from timm's state_dict layout.

The oracle of tests/test_torch_oracle.py and the model of benchmarks/train_torch.py:
pre-LN blocks, fused qkv, exact or tanh GELU, token or mean pooling, as minivit.
"""
import torch
import torch.nn.functional as F


def torch_vit(sd, x, cfg):
    """sd: timm-style dict of torch tensors; x (B, C, H, W) tensor -> logits (B, K)."""
    B, D, H = x.shape[0], cfg.dim, cfg.heads
    d = D // H
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.patch_size)
    t = t.flatten(2).transpose(1, 2)                                   # (B, N, D)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], dim=1) + sd["pos_embed"]
    N = t.shape[1]
    gelu = "none" if cfg.gelu == "exact" else "tanh"
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], cfg.ln_eps)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        t = t + F.linear(h, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(t, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], cfg.ln_eps)
        h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]), approximate=gelu)
        t = t + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    t = F.layer_norm(t, (D,), sd["norm.weight"], sd["norm.bias"], cfg.ln_eps)
    pooled = t[:, 0] if cfg.pool == "token" else t[:, 1:].mean(dim=1)
    return F.linear(pooled, sd["head.weight"], sd["head.bias"])

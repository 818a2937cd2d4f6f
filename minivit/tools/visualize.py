"""What a trained ViT learned: the quantities of the paper's Figure 7 and attention rollout.

All functions take arrays (NumPy or CuPy) and return NumPy arrays for plotting.
"""
import numpy as np

from ..backend import to_numpy


def attention_maps(cache):
    """Attention weights of every block from a forward cache: list of (B, H, N+1, N+1), one per block."""
    return [to_numpy(block.attn.attention.probs) for block in cache.encoder.blocks]


def attention_rollout(maps):
    """Attention rollout (Abnar & Zuidema 2020), as the ViT paper's Appendix D.8 uses it.

    Each layer's attention is averaged over heads, the identity is added for the residual
    path and rows are renormalised, A' = (A + I) / 2. The product A'_L ... A'_1 says how much
    each output token draws from each input token. Returns (B, N+1, N+1)."""
    B, _, T, _ = maps[0].shape
    joint = np.broadcast_to(np.eye(T), (B, T, T))
    for a in maps:
        a = a.mean(axis=1)                                # (B, T, T): mean over heads
        a = 0.5 * (a + np.eye(T))                         # the residual connection
        a = a / a.sum(axis=-1, keepdims=True)
        joint = a @ joint
    return joint


def mean_attention_distance(maps, grid, patch_size):
    """Mean attention distance in pixels, per block and head: (L, H).

    For each query patch, the distance in the image to each key patch weighted by the
    attention it pays (the class token excluded, rows renormalised), averaged over
    queries and images: the "receptive field size" of Figure 7 (right)."""
    ys, xs = np.divmod(np.arange(grid * grid), grid)
    pos = np.stack([ys, xs], axis=1) * patch_size                          # (N, 2) pixels
    dist = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))     # (N, N)
    out = []
    for a in maps:
        a = a[:, :, 1:, 1:]                                                # (B, H, N, N) patch to patch
        a = a / a.sum(axis=-1, keepdims=True)
        out.append((a * dist).sum(-1).mean(axis=(0, 2)))                   # (H,)
    return np.stack(out)


def patch_filter_components(w, k=28):
    """Principal components of the patch-embedding filters (Figure 7, left).

    w (D, C, P, P): each of the D filters is a vector of C*P*P values. Returns the top k
    right-singular vectors reshaped to (k, P, P, C) images, and the explained variance ratios."""
    w = to_numpy(w).astype(np.float64)
    D, C, P, _ = w.shape
    flat = w.reshape(D, -1)
    flat = flat - flat.mean(axis=0)
    _, s, vt = np.linalg.svd(flat, full_matrices=False)
    k = min(k, vt.shape[0])
    comps = vt[:k].reshape(k, C, P, P).transpose(0, 2, 3, 1)
    return comps, (s ** 2 / (s ** 2).sum())[:k]


def position_similarity(pos_embed, grid):
    """Cosine similarity of each patch's position embedding with every other's (Figure 7, centre).

    pos_embed (1, N+1, D) with the class token first -> (grid, grid, grid, grid): entry
    [i, j] is the similarity map of position (i, j) laid out on the patch grid."""
    p = to_numpy(pos_embed)[0, 1:].astype(np.float64)                      # (N, D)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    return (p @ p.T).reshape(grid, grid, grid, grid)

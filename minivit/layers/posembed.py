"""Position embeddings, the paper's variants (Appendix D.4), each a small pair of functions.

Attention treats its tokens as a set: without positions, shuffling the patches changes
nothing. Each variant gives every token position (the class token first, then the patches
row by row) a D-vector E_pos that is added to the token (paper eq. 1):

- "none":      no position information at all (the paper's baseline in Table 8);
- "learned":   one learned D-vector per position, a (1, N+1, D) table (the paper's default);
- "learned2d": two learned tables of width D/2, one indexed by the patch's row and one by its
               column, concatenated per patch; the class token gets zeros;
- "sincos":    fixed 2-D sine-cosine features (MoCo v3, MAE); nothing to learn;
- "relative":  nothing is added to the tokens; instead every block's attention adds, to the logit
               of query i and key j, the query's product with a learned embedding of the offset
               i - j, one table per head (the paper's "1-dimensional relative attention").

`ViTConfig.pos_embed_every_layer` moves the addition from once after the stem to the start of
every block, each block with its own table ("blocks.3.pos_embed").

A variant is (shapes, table, table_backward): the parameter shapes it needs, the (1, N+1, D)
table it adds, and the gradient of that table with respect to its parameters. Adding and its
backward (the sum over the batch) are shared: `pos_forward`, `pos_backward`.
"""
import numpy as np

from ..backend import get_array_module
from .resample import resample_table_backward, resample_table_forward


def sincos_table(cfg, xp=np, dtype="float32"):
    """Fixed 2-D sine-cosine position embedding (1, N + 1, D), zeros for the class token.

    A quarter of the channels each for sin and cos of the column and of the row, in that order,
    with frequencies 1 / 10000^(i / (D/4)), as in MoCo v3 and MAE.
    """
    g, D = cfg.grid, cfg.dim
    omega = 1.0 / 10000.0 ** (np.arange(D // 4) / (D // 4))  # (D/4,)
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    out_r = rows.reshape(-1, 1) * omega  # (N, D/4)
    out_c = cols.reshape(-1, 1) * omega  # (N, D/4)
    pe = np.concatenate([np.sin(out_c), np.cos(out_c), np.sin(out_r), np.cos(out_r)], axis=1)  # (N, D)
    pe = np.concatenate([np.zeros((1, D)), pe], axis=0)[None]  # (1, N + 1, D)
    return xp.asarray(pe, dtype=dtype)


# ---------------------------------------------------------------- the variants

def _none_shapes(cfg):
    return {}


def _learned_shapes(cfg):
    return {"pos_embed": (1, cfg.num_patches + 1, cfg.dim)}


def _learned_table(params, prefix, cfg, xp, dtype):
    return params[prefix + "pos_embed"]                         # (1, N+1, D)


def _learned_table_backward(dtable, cfg):
    return {"pos_embed": dtable}


def _learned2d_shapes(cfg):
    return {"pos_embed_row": (cfg.grid, cfg.dim // 2), "pos_embed_col": (cfg.grid, cfg.dim // 2)}


def _learned2d_table(params, prefix, cfg, xp, dtype):
    g, half = cfg.grid, cfg.dim // 2
    rows = xp.broadcast_to(params[prefix + "pos_embed_row"][:, None, :], (g, g, half))  # (g, g, D/2): row r in row r
    cols = xp.broadcast_to(params[prefix + "pos_embed_col"][None, :, :], (g, g, half))  # (g, g, D/2): col c in col c
    patches = xp.concatenate([rows, cols], axis=2).reshape(1, g * g, cfg.dim)  # (1, N, D)
    cls = xp.zeros((1, 1, cfg.dim), dtype=patches.dtype)
    return xp.concatenate([cls, patches], axis=1)                          # (1, N+1, D)


def _learned2d_table_backward(dtable, cfg):
    g, half = cfg.grid, cfg.dim // 2
    d = dtable[0, 1:].reshape(g, g, cfg.dim)   # the class token's row has no parameter behind it
    # each row vector was copied into g patches (one per column): its gradient is their sum, and likewise
    return {"pos_embed_row": d[:, :, :half].sum(axis=1), "pos_embed_col": d[:, :, half:].sum(axis=0)}


def _sincos_table(params, prefix, cfg, xp, dtype):
    return sincos_table(cfg, xp, dtype)


def _relative_block_shapes(cfg):
    T = cfg.num_patches + 1
    return {"attn.pos_embed_rel": (cfg.heads, 2 * T - 1, cfg.dim // cfg.heads)}  # offsets -(T-1) .. T-1


VARIANTS = {  # name -> (shapes, table, table_backward); table_backward None: nothing to learn
    "none": (_none_shapes, None, None),
    "learned": (_learned_shapes, _learned_table, _learned_table_backward),
    "learned2d": (_learned2d_shapes, _learned2d_table, _learned2d_table_backward),
    "sincos": (_none_shapes, _sincos_table, None),
    "relative": (_none_shapes, None, None),   # nothing added to the tokens: see relpos_* below
}
BLOCK_SHAPES = {"relative": _relative_block_shapes}  # variants with parameters inside every block's attention


def pos_shapes(cfg, prefix=""):
    """The variant's parameter names (under `prefix`) and shapes."""
    return {prefix + k: v for k, v in VARIANTS[cfg.pos_embed][0](cfg).items()}


def block_pos_shapes(cfg, prefix):
    """Parameters a variant keeps inside block `prefix`'s attention (the relative tables)."""
    shapes = BLOCK_SHAPES.get(cfg.pos_embed)
    return {prefix + k: v for k, v in shapes(cfg).items()} if shapes else {}


def relpos_forward(qs, table):
    """The relative-position logits: qs (B, H, T, d) (queries already scaled), table (H, 2T-1, d)
    -> bias (B, H, T, T) with bias[b, h, i, j] = qs[b, h, i] . table[h, i - j + T - 1].

    All offsets for a query at once: qs @ table^T gives (B, H, T, 2T-1), and each row i then
    picks its T entries i - j + T - 1, j = 0 .. T-1.
    """
    xp = get_array_module(qs)
    B, H, T, _ = qs.shape
    full = qs @ table.swapaxes(-1, -2)[None]                             # (B, H, T, 2T-1)
    idx = xp.arange(T)[:, None] - xp.arange(T)[None, :] + T - 1          # (T, T): the offset's row in the table
    idx = xp.broadcast_to(idx, (B, H, T, T))
    return xp.take_along_axis(full, idx, axis=-1), (qs, table, idx)      # (B, H, T, T)


def relpos_backward(dbias, cache):
    """dbias (B, H, T, T) -> dqs (B, H, T, d), dtable (H, 2T-1, d)."""
    qs, table, idx = cache
    xp = get_array_module(dbias)
    B, H, T, _ = dbias.shape
    dfull = xp.zeros((B, H, T, 2 * T - 1), dtype=dbias.dtype)
    # In row i the offsets i - j are all different, so no index repeats and a put is exact.
    xp.put_along_axis(dfull, idx, dbias, axis=-1)                        # (B, H, T, 2T-1)
    dqs = dfull @ table[None]                                            # (B, H, T, d)
    dtable = xp.einsum("bhio,bhid->hod", dfull, qs)                      # (H, 2T-1, d)
    return dqs, dtable


def pos_forward(z, params, cfg, prefix=""):
    """z (B, N+1, D) -> z + E_pos (B, N+1, D), cache.

    Progressive resizing trains early steps on smaller images (cfg is then the small images' config):
    a learned table stays at the final grid and is resampled to the current one here
    (layers/resample.py); a fixed sine-cosine table is made at the current grid."""
    _, table, _ = VARIANTS[cfg.pos_embed]
    if table is None:
        return z, (cfg, prefix, None)
    t = table(params, prefix, cfg, get_array_module(z), z.dtype)   # (1, N0+1, D)
    resampled = None
    if t.shape[1] != z.shape[1]:                                  # a learned table at the final grid
        t, resampled = resample_table_forward(t, cfg.grid)       # (1, N+1, D)
    return z + t, (cfg, prefix, resampled)


def pos_backward(dz, cache):
    """dz (B, N+1, D) -> (dz, grads of the variant's parameters under the cache's prefix).

    The addition passes dz through unchanged; the table, added to every image of the batch,
    gets the batch's sum (carried back through the resampling, its transpose, when there was one)."""
    cfg, prefix, resampled = cache
    _, _, table_backward = VARIANTS[cfg.pos_embed]
    if table_backward is None:
        return dz, {}
    dtable = dz.sum(axis=0, keepdims=True)                      # (1, N+1, D)
    if resampled is not None:
        dtable = resample_table_backward(dtable, resampled)     # (1, N0+1, D)
    return dz, {prefix + k: v for k, v in table_backward(dtable, cfg).items()}

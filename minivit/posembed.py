"""Position embeddings, the paper's variants (Appendix D.4), each a small pair of functions.

Attention treats its tokens as a set: without positions, shuffling the patches changes
nothing. Each variant gives every token position (the class token first, then the patches
row by row) a D-vector E_pos that is added to the token (paper eq. 1):

- "none":      no position information at all (the paper's baseline in Table 8);
- "learned":   one learned D-vector per position, a (1, N+1, D) table (the paper's default);
- "learned2d": two learned tables of width D/2, one indexed by the patch's row and one by its
               column, concatenated per patch; the class token gets zeros;
- "sincos":    fixed 2-D sine-cosine features (MoCo v3, MAE); nothing to learn.

`ViTConfig.pos_embed_every_layer` moves the addition from once after the stem to the start of
every block, each block with its own table ("blocks.3.pos_embed").

A variant is (shapes, table, table_backward): the parameter shapes it needs, the (1, N+1, D)
table it adds, and the gradient of that table with respect to its parameters. Adding and its
backward (the sum over the batch) are shared: `pos_forward`, `pos_backward`.
"""
import numpy as np

from .backend import get_array_module


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


def _learned_table(p, cfg, xp, dtype):
    return p["pos_embed"]                                       # (1, N+1, D)


def _learned_table_backward(dtable, cfg):
    return {"pos_embed": dtable}


def _learned2d_shapes(cfg):
    return {"pos_embed_row": (cfg.grid, cfg.dim // 2), "pos_embed_col": (cfg.grid, cfg.dim // 2)}


def _learned2d_table(p, cfg, xp, dtype):
    g, half = cfg.grid, cfg.dim // 2
    rows = xp.broadcast_to(p["pos_embed_row"][:, None, :], (g, g, half))   # (g, g, D/2): row r everywhere in row r
    cols = xp.broadcast_to(p["pos_embed_col"][None, :, :], (g, g, half))   # (g, g, D/2): col c everywhere in col c
    patches = xp.concatenate([rows, cols], axis=2).reshape(1, g * g, cfg.dim)  # (1, N, D)
    cls = xp.zeros((1, 1, cfg.dim), dtype=patches.dtype)
    return xp.concatenate([cls, patches], axis=1)                          # (1, N+1, D)


def _learned2d_table_backward(dtable, cfg):
    g, half = cfg.grid, cfg.dim // 2
    d = dtable[0, 1:].reshape(g, g, cfg.dim)   # the class token's row has no parameter behind it
    # each row vector was copied into g patches (one per column): its gradient is their sum, and likewise
    return {"pos_embed_row": d[:, :, :half].sum(axis=1), "pos_embed_col": d[:, :, half:].sum(axis=0)}


def _sincos_table(p, cfg, xp, dtype):
    return sincos_table(cfg, xp, dtype)


VARIANTS = {  # name -> (shapes, table, table_backward); table_backward None: nothing to learn
    "none": (_none_shapes, None, None),
    "learned": (_learned_shapes, _learned_table, _learned_table_backward),
    "learned2d": (_learned2d_shapes, _learned2d_table, _learned2d_table_backward),
    "sincos": (_none_shapes, _sincos_table, None),
}


def pos_shapes(cfg, prefix=""):
    """The variant's parameter names (under `prefix`) and shapes."""
    return {prefix + k: v for k, v in VARIANTS[cfg.pos_embed][0](cfg).items()}


def pos_forward(z, params, cfg, prefix=""):
    """z (B, N+1, D) -> z + E_pos (B, N+1, D), cache."""
    _, table, _ = VARIANTS[cfg.pos_embed]
    if table is None:
        return z, (cfg, prefix)
    xp = get_array_module(z)
    p = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)} if prefix else params
    return z + table(p, cfg, xp, z.dtype), (cfg, prefix)


def pos_backward(dz, cache):
    """dz (B, N+1, D) -> (dz, grads of the variant's parameters under the cache's prefix).

    The addition passes dz through unchanged; the table, added to every image of the batch,
    gets the batch's sum."""
    cfg, prefix = cache
    _, _, table_backward = VARIANTS[cfg.pos_embed]
    if table_backward is None:
        return dz, {}
    dtable = dz.sum(axis=0, keepdims=True)                      # (1, N+1, D)
    return dz, {prefix + k: v for k, v in table_backward(dtable, cfg).items()}

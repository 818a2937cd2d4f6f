# A solution to the exercise in 02_images_as_patches.ipynb (its cell has numpy as np).
def my_patch_embed(x, w, b):
    """x (B, C, H, W), w (D, C, P, P), b (D,) -> tokens (B, N, D)."""
    D, C, P, _ = w.shape
    patches = my_im2col(x, P)                        # (B, N, C*P*P), flattened (c, row, col)
    return patches @ w.reshape(D, -1).T + b          # w flattened in the same (c, row, col) order

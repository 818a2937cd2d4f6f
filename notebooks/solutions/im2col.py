# A solution to the exercise in 02_images_as_patches.ipynb (its cell has numpy as np).
def my_im2col(x, P):
    """x (B, C, H, W) -> (B, N, C*P*P): patches in raster order, each flattened as (c, row, col)."""
    B, C, H, W = x.shape
    t = x.reshape(B, C, H // P, P, W // P, P)        # (B, C, gh, P, gw, P)
    t = t.transpose(0, 2, 4, 1, 3, 5)                # (B, gh, gw, C, P, P)
    return t.reshape(B, (H // P) * (W // P), C * P * P)

# A solution to the exercise in 01_attention_by_hand.ipynb (its cell has numpy as np).
def my_split_heads(x, heads):
    """x (B, N, D) -> (B, H, N, d), d = D / H; head h owns features h*d .. (h+1)*d - 1."""
    B, N, D = x.shape
    return x.reshape(B, N, heads, D // heads).transpose(0, 2, 1, 3)

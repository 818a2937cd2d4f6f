"""The ViT as a picture: an image cut into patches, the patches as tokens, the encoder, the head
(paper Figure 1), with the shapes a configuration gives each step (docs/architecture.md walks the
same steps in a table)."""
import numpy as np


def draw_architecture(cfg, path=None):
    """Draw the model of `cfg` (a ViTConfig) from image to logits; save it to `path` if given.
    -> the matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, Rectangle

    N, D, L, K, P = cfg.num_patches, cfg.dim, cfg.depth, cfg.num_classes, cfg.patch_size
    fig = Figure(figsize=(13, 4.2))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set(xlim=(0, 13), ylim=(0, 4.2))
    ax.axis("off")

    def box(x, y, w, h, title, shape, colour):
        ax.add_patch(Rectangle((x, y), w, h, facecolor=colour, edgecolor="0.3", lw=1))
        ax.text(x + w / 2, y + h / 2 + 0.18, title, ha="center", va="center", fontsize=9.5, weight="bold")
        ax.text(x + w / 2, y + h / 2 - 0.22, shape, ha="center", va="center", fontsize=8.5, family="monospace")

    def arrow(x0, x1, y=2.1):
        ax.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="-|>", mutation_scale=12, color="0.3"))

    # the image, cut into a grid of P x P patches (drawn with at most 8 per side)
    g = min(cfg.grid, 8)
    step = 1.6 / g
    for i in range(g):
        for j in range(g):
            shade = 0.55 + 0.4 * np.sin(1.3 * i + 0.7 * j) ** 2
            ax.add_patch(Rectangle((0.25 + j * step, 1.3 + (g - 1 - i) * step), step * 0.92, step * 0.92,
                                   facecolor=(shade * 0.6, shade * 0.75, shade), edgecolor="none"))
    ax.text(1.05, 3.15, f"image {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}", ha="center", fontsize=9.5,
            weight="bold")
    ax.text(1.05, 1.0, f"{cfg.grid}x{cfg.grid} patches of {P}x{P}" + (" (of the stem's map)" if cfg.stem_channels else ""),
            ha="center", fontsize=8.5)
    arrow(1.95, 2.35)
    box(2.35, 1.45, 1.7, 1.3, "patch embedding", f"x_p E: ({N}, {D})", "#dfe9f5")
    arrow(4.05, 4.45)
    box(4.45, 1.45, 1.9, 1.3, "[class] + E_pos", f"z0: ({N + 1}, {D})", "#e7f0dc")
    arrow(6.35, 6.75)
    # the encoder: L pre-LN blocks
    ax.add_patch(Rectangle((6.75, 0.55), 2.9, 3.1, facecolor="#f6ecdc", edgecolor="0.3", lw=1))
    ax.text(8.2, 3.35, f"encoder block x {L}", ha="center", fontsize=9.5, weight="bold")
    for k, (line, y) in enumerate((("LayerNorm", 2.85), (f"multi-head attention, {cfg.heads} heads", 2.45),
                                   ("+ residual", 2.05), ("LayerNorm", 1.6), (f"MLP {D} -> {cfg.mlp_dim} -> {D}, GELU", 1.2),
                                   ("+ residual", 0.8))):
        ax.text(8.2, y, line, ha="center", fontsize=8.5, family="monospace" if k % 3 == 2 else None)
    arrow(9.65, 10.05)
    pooled = "class token" if cfg.pool == "token" else "token mean"     # what the head reads
    box(10.05, 1.45, 1.45, 1.3, "LayerNorm, pool", f"{pooled}: ({D},)", "#ece3f3")
    arrow(11.5, 11.85)
    head = "class head" if cfg.head == "classify" else "colour head"
    box(11.85, 1.45, 1.0, 1.3, head, f"({K},)" if cfg.head == "classify" else "(512,)", "#f5dfe0")
    ax.text(6.5, 0.15, "eq. 1: z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos    eq. 2-3: z_l = z + MSA(LN(z)), z + MLP(LN(z))"
            "    eq. 4: y = LN(z_L^0)", ha="center", fontsize=8.5, color="0.25")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig

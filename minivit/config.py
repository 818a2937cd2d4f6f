"""Configuration: the model (ViTConfig and its named presets) and the training run (TrainConfig).

Presets follow the ViT paper's Table 1 (at 224x224 with 1000 classes, as timm's
`vit_*_patch16_224`), small CIFAR-10 models (32x32, patch 4), and a tiny model
for tests.
"""
import math
from dataclasses import asdict, dataclass, fields, replace


POS_EMBEDS = ("learned", "learned2d", "sincos", "relative", "none")  # minivit/layers/posembed.py
HEADS = ("classify", "mpp")  # what reads the encoder's output: model.py's class head, pretrain.py's


class ConfigError(ValueError):
    """A configuration that cannot describe a ViT."""


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32        # input height = width, pixels
    patch_size: int = 4         # P: side of a square patch; image_size must be a multiple
    in_channels: int = 3        # C: colour channels of the input
    num_classes: int = 10       # K: classes of the head
    dim: int = 128              # D: token width ("Hidden size D" in Table 1)
    depth: int = 6              # number of encoder blocks ("Layers")
    heads: int = 4              # H: attention heads; dim must be a multiple
    mlp_dim: int = 256          # hidden width of each block's MLP ("MLP size")
    pool: str = "token"         # "token": head reads the class token; "gap": mean of patch tokens
    pos_embed: str = "learned"  # "learned" (1-D table), "learned2d" (row + column tables), "sincos" (fixed),
    #                             "relative" (offset embeddings inside attention), "none"
    pos_embed_every_layer: bool = False  # add a (separate) position embedding at the start of every block
    gelu: str = "exact"         # "exact": x*Phi(x) with erf; "tanh": the tanh approximation
    dropout: float = 0.0        # dropout after embeddings, attention output and MLP layers
    attn_dropout: float = 0.0   # dropout on the attention weights
    drop_path: float = 0.0      # stochastic depth: block i drops each residual branch for a whole image with
    #                             rate drop_path * i / (depth - 1), 0 at the first block (timm's rule)
    layer_scale: float = 0.0    # LayerScale (CaiT): a per-channel gain on each branch, initialised to this; 0: none
    attn_init: str = "xavier"   # "xavier" (the original ViT's), or "mimetic" (Trockman & Kolter, 2023): each head's
    #                             W_q W_k^T starts near +I and W_v W_proj near -I (models/init.py: mimetic_attention)
    ln_eps: float = 1e-6        # LayerNorm epsilon (1e-6 as in the original ViT code)
    stem_channels: tuple = ()   # hybrid (paper 3.1): widths of the conv3x3-GroupNorm-ReLU stem; () = image patches
    stem_strides: tuple = ()    # the stride of each stem layer
    stem_groups: int = 8        # GroupNorm groups in the stem (each width must be a multiple)
    head: str = "classify"      # "classify": the class head (K logits per image); "mpp": masked patch
    #                             prediction's [mask] token and 512-colour head per patch (pre-training, B.1.2)

    def __post_init__(self):
        for name in ("stem_channels", "stem_strides"):  # JSON gives lists back; keep the config hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "depth", "heads", "mlp_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not self.stem_channels and self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.pool not in ("token", "gap"):
            raise ConfigError(f"pool must be 'token' or 'gap', got {self.pool!r}")
        if self.pos_embed not in POS_EMBEDS:
            raise ConfigError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got {self.pos_embed!r}")
        if self.pos_embed == "sincos" and self.dim % 4:
            raise ConfigError(f"pos_embed 'sincos' needs dim divisible by 4, got dim {self.dim}")
        if self.pos_embed == "learned2d" and self.dim % 2:
            raise ConfigError(f"pos_embed 'learned2d' needs an even dim (two halves), got dim {self.dim}")
        if self.pos_embed_every_layer and self.pos_embed in ("none", "relative"):
            raise ConfigError("pos_embed_every_layer needs a position embedding to add to the tokens, "
                              f"not pos_embed={self.pos_embed!r}")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.attn_init not in ("xavier", "mimetic"):
            raise ConfigError(f"attn_init must be 'xavier' or 'mimetic', got {self.attn_init!r}")
        if self.gelu not in ("exact", "tanh"):
            raise ConfigError(f"gelu must be 'exact' or 'tanh', got {self.gelu!r}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {v!r}")
        if not (isinstance(self.layer_scale, (int, float)) and self.layer_scale >= 0):
            raise ConfigError(f"layer_scale must be >= 0 (0: no LayerScale), got {self.layer_scale!r}")
        if not self.ln_eps > 0:
            raise ConfigError(f"ln_eps must be positive, got {self.ln_eps!r}")
        if len(self.stem_channels) != len(self.stem_strides):
            raise ConfigError(f"stem_channels {self.stem_channels} and stem_strides {self.stem_strides} "
                              "must have one entry per stem layer")
        for c, s in zip(self.stem_channels, self.stem_strides):
            if not (isinstance(c, int) and c >= 1 and isinstance(s, int) and s >= 1):
                raise ConfigError(f"stem widths and strides must be positive integers, got {c!r}, {s!r}")
            if c % self.stem_groups:
                raise ConfigError(f"stem width {c} is not divisible by stem_groups {self.stem_groups}")
        if self.image_size % self.downsampling:
            raise ConfigError(f"image_size {self.image_size} is not divisible by the stem's total stride "
                              f"{self.downsampling}")
        if self.feature_size % self.patch_size:
            raise ConfigError(f"the stem's {self.feature_size}x{self.feature_size} feature map is not divisible "
                              f"by patch_size {self.patch_size}")

    @property
    def downsampling(self):
        """How much the stem shrinks the image (1 without a stem)."""
        return math.prod(self.stem_strides)

    @property
    def feature_size(self):
        """Side of what the patch projection cuts: the image, or the stem's feature map."""
        return self.image_size // self.downsampling

    @property
    def patch_channels(self):
        """Channels of what the patch projection cuts: the image's, or the stem's last width."""
        return self.stem_channels[-1] if self.stem_channels else self.in_channels

    @property
    def grid(self):
        """Patches per side."""
        return self.feature_size // self.patch_size

    @property
    def num_patches(self):
        """N: patch tokens per image (the class token makes N + 1)."""
        return self.grid ** 2

    @property
    def tokens_per_image(self):
        """N + 1: the tokens each image puts through the encoder (the trainer sizes its shards by them)."""
        return self.num_patches + 1

    @property
    def random_masks(self):
        """Whether a training forward pass draws random masks (dropout, drop path), so needs an rng."""
        return bool(self.dropout or self.attn_dropout or self.drop_path)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name, **overrides):
        """A named preset, with any field overridden: ViTConfig.preset("vit-b16", num_classes=10)."""
        key = name.lower().replace("/", "").replace("_", "-")
        if key not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[key], **overrides)


def _paper(dim, depth, heads, mlp_dim, patch=16):
    return ViTConfig(image_size=224, patch_size=patch, num_classes=1000, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim)


PRESETS = {
    # The ViT paper's Table 1 (Ti/16 and S/16 are from DeiT, as in timm).
    "vit-ti16": _paper(192, 12, 3, 768),
    "vit-s16": _paper(384, 12, 6, 1536),
    "vit-b16": _paper(768, 12, 12, 3072),
    "vit-l16": _paper(1024, 24, 16, 4096),
    "vit-h14": _paper(1280, 32, 16, 5120, patch=14),
    # CIFAR-10: 32x32 images, patch 4 -> 8x8 = 64 patch tokens.
    "cifar-tiny": ViTConfig(dim=64, depth=4, heads=4, mlp_dim=128),
    "cifar-small": ViTConfig(dim=128, depth=6, heads=4, mlp_dim=256),
    "cifar-base": ViTConfig(dim=192, depth=8, heads=6, mlp_dim=384),
    # The hybrid (paper 3.1): a conv stem (32 channels at 32x32, 64 at 16x16), its map cut into
    # 2x2 patches (8x8 = 64 tokens, as cifar-tiny's), then cifar-tiny's encoder.
    "cifar-hybrid": ViTConfig(patch_size=2, dim=64, depth=4, heads=4, mlp_dim=128,
                              stem_channels=(32, 64), stem_strides=(1, 2)),
    # For tests: 8x8 images, 4 patches, two thin blocks.
    "test": ViTConfig(image_size=8, patch_size=4, in_channels=3, num_classes=5, dim=8, depth=2, heads=2, mlp_dim=16),
}


@dataclass
class TrainConfig:
    epochs: int = 10              # passes over the training set
    batch_size: int = 128         # images per optimiser step
    lr: float = 1e-3              # peak learning rate (AdamW)
    min_lr: float = 1e-5          # learning rate at the end of the cosine decay
    warmup_epochs: float = 1.0    # linear warmup length, in epochs
    weight_decay: float = 0.05    # AdamW decoupled decay (2-D+ tensors only)
    label_smoothing: float = 0.1  # cross-entropy target smoothing
    clip_norm: float = 1.0        # clip gradients to this global norm (0: off)
    augment: bool = True          # random crop (pad 4) and horizontal flip
    seed: int = 0                 # seeds init, shuffling, augmentation and dropout
    threads: int = 2              # data-parallel threads on NumPy (one BLAS thread each)
    eval_batch_size: int = 500    # images per evaluation batch
    optimizer: str = "adamw"      # "adamw", or "sgd" (with momentum: the paper's fine-tuning optimiser)
    momentum: float = 0.9         # SGD momentum (unused by AdamW)
    mixup: float = 0.0            # MixUp's Beta(alpha, alpha) parameter; 0: off (minivit/data/transforms.py: mix_batch)
    cutmix: float = 0.0           # CutMix's Beta(alpha, alpha) parameter; 0: off; both on: each batch one of the two
    ema: float = 0.0              # decay of an EMA of the weights, evaluated beside them (e.g. 0.999); 0: off
    randaugment: int = 0          # RandAugment's number of operations per image; 0: off (minivit/data/randaugment.py)
    randaugment_magnitude: float = 9.0   # their magnitude, 0..10
    random_erasing: float = 0.0   # probability that an image gets a box erased to its mean colour; 0: off

    def __post_init__(self):
        checks = [("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
                  ("lr", self.lr > 0), ("min_lr", self.min_lr >= 0), ("warmup_epochs", self.warmup_epochs >= 0),
                  ("weight_decay", self.weight_decay >= 0), ("label_smoothing", 0 <= self.label_smoothing < 1),
                  ("clip_norm", self.clip_norm >= 0), ("threads", self.threads >= 1),
                  ("eval_batch_size", self.eval_batch_size >= 1), ("optimizer", self.optimizer in ("adamw", "sgd")),
                  ("momentum", 0 <= self.momentum < 1), ("mixup", self.mixup >= 0), ("cutmix", self.cutmix >= 0),
                  ("ema", 0 <= self.ema < 1), ("randaugment", self.randaugment >= 0),
                  ("randaugment_magnitude", 0 <= self.randaugment_magnitude <= 10),
                  ("random_erasing", 0 <= self.random_erasing <= 1)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError("invalid training setting(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))

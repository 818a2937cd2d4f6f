"""What reads the encoder's output, as parameter shapes: masked patch prediction's [mask] token and
colour head (pre-training, paper B.1.2)."""


LEVELS = 8                  # 3 bits per colour channel: 8 ** 3 = 512 classes for RGB


def mpp_classes(cfg):
    """Number of mean colours: 8 levels per channel, 512 for RGB."""
    return LEVELS ** cfg.in_channels


def mpp_shapes(cfg):
    """The parameters masked patch prediction adds to the encoder (model.param_shapes uses it)."""
    D, K = cfg.dim, mpp_classes(cfg)
    return {"mask_token": (1, 1, D), "mpp_head.w": (D, K), "mpp_head.b": (K,)}

"""minivit: the Vision Transformer written out by hand on NumPy (CPU) or CuPy (GPU)."""
from .activations import dropout_backward, dropout_forward, gelu_backward, gelu_forward
from .attention import (attention_backward, attention_forward, mhsa_backward, mhsa_forward,
                        softmax, softmax_backward)
from .backend import BackendError, backend_name, get_array_module, to_device, to_numpy, use_backend
from .block import block_backward, block_forward, mlp_backward, mlp_forward
from .config import PRESETS, ConfigError, ViTConfig
from .conv import (col2im, conv2d_backward, conv2d_forward, im2col, patch_embed_backward,
                   patch_embed_forward)
from .linear import linear_backward, linear_forward
from .loss import cross_entropy
from .model import (backward, check_input, count_params, forward, init_params, param_shapes, sincos_pos_embed,
                    with_new_head)
from .norm import layernorm_backward, layernorm_forward
from .optim import SGD, AdamW, clip_grad_norm, global_norm, warmup_cosine
from .timm import from_timm, to_timm
from .resolution import resize_pos_embed
from .jax_npz import load_jax_npz, save_jax_npz
from .checkpoint import load_checkpoint, save_checkpoint
from .cnn import CNNConfig
from . import allocator, checkpoint, cnn, data, gradcheck, models, plots, posembed, pretrain, profile, stem, train, visualize  # noqa: F401  (minivit.data, ...)

__version__ = "0.1.0"

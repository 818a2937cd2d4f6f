"""minivit: the Vision Transformer written out by hand on NumPy (CPU) or CuPy (GPU).

The package is laid out as its architecture (docs/architecture.md), each floor importing only
the floors below it: backend and config at the ground, then layers/, data/, models/, io/,
train/, tools/ and cli/. This face gathers the names a notebook or script needs most.
"""
from .backend import BackendError, backend_name, get_array_module, to_device, to_numpy, use_backend
from .config import PRESETS, ConfigError, ViTConfig
from .layers.activations import dropout_backward, dropout_forward, gelu_backward, gelu_forward
from .layers.attention import (attention_backward, attention_forward, mhsa_backward, mhsa_forward, softmax,
                               softmax_backward)
from .layers.conv import col2im, conv2d_backward, conv2d_forward, im2col, patch_embed_backward, patch_embed_forward
from .layers.linear import linear_backward, linear_forward
from .layers.loss import cross_entropy
from .layers.norm import layernorm_backward, layernorm_forward
from .models.block import block_backward, block_forward, mlp_backward, mlp_forward
from .models.cnn import CNNConfig
from .models.resolution import resize_pos_embed
from .models.init import init_params
from .layers.posembed import sincos_table as sincos_pos_embed
from .models.vit import backward, check_input, count_params, forward, param_shapes, with_new_head
from .io.checkpoint import load_checkpoint, save_checkpoint
from .io.jax_npz import load_jax_npz, save_jax_npz
from .io.pretrained import load_pretrained
from .io.timm import from_timm, to_timm
from .train.optim import SGD, AdamW, clip_grad_norm, global_norm, warmup_decay
# The floors themselves, so that mv.layers.stem, mv.io.checkpoint, mv.tools.gradcheck ... read as their paths.
from . import data, io, layers, models, tools, train  # noqa: F401

__version__ = "0.1.0"

"""The ViT as an ONNX graph, built node by node from the parameters with the `onnx` helper API
(opset 17), for onnxruntime and the deployment runtimes that read ONNX.

The graph is the forward pass of minivit/models/vit.py written in ONNX operators:

    image (B, C, H, W), pixels in [0, 1]
    -> (x - mean) / std                       the training run's normalisation, inside the graph
    -> Conv, kernel = stride = P -> (B, N, D)  the patch embedding (eq. 1)
    -> [class token; tokens] + E_pos          (B, N+1, D); a fixed or row/column table is a constant
    -> L x { x + MSA(LN(x)); x + MLP(LN(x)) }  LayerNormalization, MatMul, Softmax, Erf (eq. 2-3)
    -> LN, class token (or mean of the patch tokens) -> head -> logits (B, K)

The batch is dynamic. GELU is x/2 (1 + erf(x / sqrt 2)), or the tanh form for gelu='tanh'. The
normalisation is inside the graph, so its input is the image scaled to [0, 1] (uint8 / 255), and
the mean and std are also in the model's metadata. Not expressible here: the relative position
variant and the hybrid's conv stem (ValueError names them).
"""
import json
import math

import numpy as np

from ..backend import to_numpy
from ..contract import GELU_TANH_C
from ..layers.posembed import VARIANTS

OPSET = 17


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("exporting to ONNX needs the onnx package: pip install -e \".[onnx]\" (or pip install onnx)") from None
    return onnx


class _Graph:
    """Nodes and constant initialisers, named as they are added."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.inits, self.n = onnx, [], [], 0

    def const(self, name, array):
        array = np.asarray(array)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def scalar(self, value):
        """A float32 constant, added once however often it is used."""
        name = f"scalar_{value!r}"
        if name not in {i.name for i in self.inits}:
            self.const(name, np.float32(value))
        return name

    def op(self, op_type, *inputs, name=None, **attrs):
        self.n += 1
        out = name or f"{op_type.lower()}_{self.n}"
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self.n}", **attrs))
        return out

    def dense(self, x, w, b, name):
        """x @ w + b: a dense layer with minivit's (in, out) kernel."""
        return self.op("Add", self.op("MatMul", x, self.const(name + ".w", w)), self.const(name + ".b", b))


def _gelu(g, x, form):
    if form == "exact":   # x/2 (1 + erf(x / sqrt 2))
        e = g.op("Erf", g.op("Mul", x, g.scalar(1 / math.sqrt(2))))
    else:                 # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = g.op("Mul", g.op("Mul", x, x), x)
        u = g.op("Add", x, g.op("Mul", x3, g.scalar(GELU_TANH_C)))
        e = g.op("Tanh", g.op("Mul", u, g.scalar(math.sqrt(2 / math.pi))))
    return g.op("Mul", g.op("Mul", x, g.scalar(0.5)), g.op("Add", e, g.scalar(1.0)))


def _block(g, z, p, b, cfg):
    """One pre-LN encoder block (minivit/models/block.py) as graph nodes: z (B, T, D) -> (B, T, D)."""
    D, H = cfg.dim, cfg.heads
    d = D // H
    ln = lambda x, n: g.op("LayerNormalization", x, g.const(b + n + ".w", p[b + n + ".w"]),
                           g.const(b + n + ".b", p[b + n + ".b"]), axis=-1, epsilon=cfg.ln_eps)
    qkv = g.dense(ln(z, "norm1"), p[b + "attn.qkv.w"], p[b + "attn.qkv.b"], b + "attn.qkv")   # (B, T, 3D)
    qkv = g.op("Transpose", g.op("Reshape", qkv, g.const(b + "shape_qkv", np.array([0, 0, 3, H, d], np.int64))),
               perm=[2, 0, 3, 1, 4])                                                    # (3, B, H, T, d)
    q, k, v = (g.op("Gather", qkv, g.const(f"{b}idx{j}", np.array(j, np.int64)), axis=0) for j in range(3))
    scores = g.op("MatMul", g.op("Mul", q, g.scalar(1 / math.sqrt(d))), g.op("Transpose", k, perm=[0, 1, 3, 2]))  # (B, H, T, T)
    ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)                           # (B, H, T, d)
    ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), g.const(b + "shape_ctx", np.array([0, 0, D], np.int64)))
    h = g.dense(ctx, p[b + "attn.proj.w"], p[b + "attn.proj.b"], b + "attn.proj")
    if cfg.layer_scale:
        h = g.op("Mul", h, g.const(b + "ls1.gamma", p[b + "ls1.gamma"]))
    z = g.op("Add", z, h)                                                               # residual
    h = g.dense(ln(z, "norm2"), p[b + "mlp.fc1.w"], p[b + "mlp.fc1.b"], b + "mlp.fc1")
    h = g.dense(_gelu(g, h, cfg.gelu), p[b + "mlp.fc2.w"], p[b + "mlp.fc2.b"], b + "mlp.fc2")
    if cfg.layer_scale:
        h = g.op("Mul", h, g.const(b + "ls2.gamma", p[b + "ls2.gamma"]))
    return g.op("Add", z, h)                                                            # residual


def to_onnx(params, cfg, mean, std, classes=None):
    """-> an onnx.ModelProto of the model's inference forward pass (float32, dynamic batch)."""
    onnx = _onnx()
    if cfg.pos_embed == "relative" or cfg.stem_channels or cfg.head != "classify":
        raise ValueError("the ONNX export writes the classifier with patch embeddings and added position tables; "
                         f"this model has pos_embed={cfg.pos_embed!r}, stem {cfg.stem_channels or 'none'}, "
                         f"head {cfg.head!r}")
    p = {k: to_numpy(v).astype(np.float32) for k, v in params.items()}
    g = _Graph(onnx)
    C, D, P, N = cfg.in_channels, cfg.dim, cfg.patch_size, cfg.num_patches
    _, table, _ = VARIANTS[cfg.pos_embed]
    pos = lambda prefix: None if table is None else table(p, prefix, cfg, np, np.float32)   # (1, N+1, D)

    x = g.op("Div", g.op("Sub", "image", g.const("mean", np.asarray(mean, np.float32).reshape(1, C, 1, 1))),
             g.const("std", np.asarray(std, np.float32).reshape(1, C, 1, 1)))
    tok = g.op("Conv", x, g.const("patch_embed.w", p["patch_embed.w"]), g.const("patch_embed.b", p["patch_embed.b"]),
               kernel_shape=[P, P], strides=[P, P])                                          # (B, D, g, g)
    tok = g.op("Transpose", g.op("Reshape", tok, g.const("shape_BDN", np.array([0, D, N], np.int64))),
               perm=[0, 2, 1])                                                              # (B, N, D)
    batch = g.op("Slice", g.op("Shape", tok), g.const("zero", np.array([0], np.int64)),
                 g.const("one", np.array([1], np.int64)))                                   # [B]
    cls_shape = g.op("Concat", batch, g.const("shape_1D", np.array([1, D], np.int64)), axis=0)
    cls = g.op("Expand", g.const("cls_token", p["cls_token"]), cls_shape)                   # (B, 1, D)
    z = g.op("Concat", cls, tok, axis=1)                                                    # (B, N+1, D)
    if not cfg.pos_embed_every_layer and table is not None:
        z = g.op("Add", z, g.const("pos_embed", pos("")))
    for i in range(cfg.depth):
        if cfg.pos_embed_every_layer:
            z = g.op("Add", z, g.const(f"blocks.{i}.pos_embed", pos(f"blocks.{i}.")))
        z = _block(g, z, p, f"blocks.{i}.", cfg)
    z = g.op("LayerNormalization", z, g.const("norm.w", p["norm.w"]), g.const("norm.b", p["norm.b"]),
             axis=-1, epsilon=cfg.ln_eps)
    if cfg.pool == "token":
        pooled = g.op("Gather", z, g.const("idx_cls", np.array(0, np.int64)), axis=1)     # (B, D)
    else:
        patches = g.op("Slice", z, g.const("one_", np.array([1], np.int64)), g.const("end", np.array([N + 1], np.int64)),
                       g.const("axis1", np.array([1], np.int64)))
        pooled = g.op("ReduceMean", patches, axes=[1], keepdims=0)                          # (B, D)
    g.op("Add", g.op("MatMul", pooled, g.const("head.w", p["head.w"])), g.const("head.b", p["head.b"]), name="logits")

    model = _model(onnx, g, cfg, mean, std, classes)
    onnx.checker.check_model(model)
    return model


def _model(onnx, g, cfg, mean, std, classes):
    """The ModelProto around the graph's nodes: its input and output, opset, and minivit's metadata."""
    C = cfg.in_channels
    S = cfg.image_size
    graph = onnx.helper.make_graph(
        g.nodes, "minivit", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", C, S, S])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", cfg.num_classes])], g.inits)
    model = onnx.helper.make_model(graph, producer_name="minivit", opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = 8   # what onnxruntime reads since 1.11
    model.doc_string = ("minivit ViT: input 'image' (batch, C, H, W) float32 in [0, 1] (uint8 / 255); the "
                        "normalisation (x - mean) / std is inside the graph; output 'logits' (batch, K)")
    for key, value in {"minivit_config": json.dumps(cfg.to_dict()), "mean": json.dumps([float(v) for v in mean]),
                       "std": json.dumps([float(v) for v in std]), "input": "image in [0, 1], normalised inside",
                       "classes": json.dumps(list(classes) if classes is not None else None)}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def save_onnx(path, params, cfg, mean, std, classes=None):
    """Write the graph to `path` (all at once, minivit/atomic_files.py). -> path"""
    from pathlib import Path

    from ..atomic_files import atomic_write
    model = to_onnx(params, cfg, mean, std, classes)
    with atomic_write(path) as f:
        f.write(model.SerializeToString())
    return Path(path)

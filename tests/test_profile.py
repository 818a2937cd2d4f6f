"""The per-layer profiler: its FLOP counts follow from the shapes, and it leaves the model untouched."""
import minivit as mv
from minivit.layers import attention, norm
from minivit.models import block, vit
from minivit.cli.commands import main
from minivit.tools.profile import profile_step


def test_profile_counts_flops_per_layer_and_restores_the_model():
    cfg = mv.ViTConfig.preset("test")
    B, T, D, M, L = 4, cfg.num_patches + 1, cfg.dim, cfg.mlp_dim, cfg.depth
    d = D // cfg.heads
    originals = (block.layernorm_forward, attention.linear_forward, vit.block_backward)
    report = profile_step(cfg, batch_size=B, steps=2, warmup=1)
    rows = {(r["layer"], r["direction"]): r for r in report.rows}
    # a linear layer is 2 M Din Dout forward and twice that backward (dx and dw), over all L blocks
    assert rows["attn.qkv", "forward"]["flops"] == 2 * B * T * D * 3 * D * L
    assert rows["attn.qkv", "backward"]["flops"] == 4 * B * T * D * 3 * D * L
    assert rows["mlp.fc1", "forward"]["flops"] == 2 * B * T * D * M * L
    assert rows["head", "forward"]["flops"] == 2 * B * D * cfg.num_classes
    # q k^T and attn v: 2 T T d each per head
    assert rows["attention", "forward"]["flops"] == 4 * B * cfg.heads * T * T * d * L
    # the batch in the trainer's pieces: at least one per thread, so two of 2 images here
    assert rows["norm1", "forward"]["calls"] == 2 * L and rows["norm", "backward"]["calls"] == 2
    assert "batch 4 in pieces of up to 2" in str(report)
    assert rows["gelu", "forward"]["flops"] == 0
    assert all(r["ms"] >= 0 for r in report.rows)
    assert (block.layernorm_forward, attention.linear_forward, vit.block_backward) == originals
    assert block.layernorm_forward is norm.layernorm_forward
    text = str(report)
    assert "attn.qkv" in text and "GFLOP/s" in text and "peak during a step" in text
    assert report.peak_mb > 0 and report.param_mb > 0


def test_profile_whole_batch_runs_one_piece():
    cfg = mv.ViTConfig.preset("test")
    report = profile_step(cfg, batch_size=4, steps=1, warmup=0, pieces=False)
    rows = {(r["layer"], r["direction"]): r for r in report.rows}
    assert rows["norm1", "forward"]["calls"] == cfg.depth and rows["norm", "backward"]["calls"] == 1
    assert report.piece == 4 and "in pieces" not in str(report)


def test_cli_profile(capsys):
    assert main(["profile", "--preset", "test", "--batch-size", "4", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "ms per training step" in out and "mlp.fc2" in out and "backward" in out


def test_profile_books_the_hybrid_stem():
    cfg = mv.ViTConfig.preset("test", image_size=16, stem_channels=(4, 8), stem_strides=(1, 2), stem_groups=2)
    rows = {(r["layer"], r["direction"]): r for r in profile_step(cfg, batch_size=2, steps=1, warmup=0).rows}
    # a 3x3 convolution: 2 x (positions) x (C 3 3) x F; layer 0 keeps 16x16, layer 1 halves it
    assert rows["stem.0.conv", "forward"]["flops"] == 2 * 2 * 16 * 16 * 3 * 9 * 4
    assert rows["stem.1.conv", "forward"]["flops"] == 2 * 2 * 8 * 8 * 4 * 9 * 8
    assert rows["stem.0.norm", "backward"]["calls"] == 2 and ("relu", "forward") in rows  # one per piece


def test_profile_eval_times_the_forward_pass_alone(monkeypatch):
    cfg = mv.ViTConfig.preset("test")
    B, T, D, L = 3, cfg.num_patches + 1, cfg.dim, cfg.depth
    monkeypatch.setattr(mv.train.Engine, "EVAL_TOKENS_PER_SHARD", 2 * T)  # evaluate's pieces: 1 image, then 2
    report = profile_step(cfg, batch_size=B, steps=1, warmup=0, mode="eval")
    rows = {(r["layer"], r["direction"]): r for r in report.rows}
    assert {d for _, d in rows} <= {"forward", ""}                    # no backward, no optimiser
    assert rows["attn.qkv", "forward"]["flops"] == 2 * B * T * D * 3 * D * L
    assert rows["gelu", "forward"]["calls"] == 2 * L                  # two pieces through every block
    assert "forward pass (inference)" in str(report) and "AdamW" not in str(report)
    assert "batch 3 in pieces of up to 2" in str(report)
    assert report.param_mb == sum(v.nbytes for v in mv.init_params(cfg).values()) / 2 ** 20


def test_cli_profile_eval(capsys):
    assert main(["profile", "--preset", "test", "--batch-size", "2", "--steps", "1", "--mode", "eval"]) == 0
    out = capsys.readouterr().out
    assert "ms per forward pass (inference)" in out and "backward" not in out
    with __import__("pytest").raises(ValueError, match="mode"):
        profile_step(mv.ViTConfig.preset("test"), batch_size=2, steps=1, mode="infer")

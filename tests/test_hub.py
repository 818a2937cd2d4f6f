"""Weights in and out of the ecosystem (minivit/io/safetensors_file.py, minivit/io/huggingface.py, minivit/io/pretrained.py,
minivit/io/onnx_graph.py): timm's and
transformers' .safetensors, the official .npz and ONNX, every file built here from random weights.

safetensors is in the default install; onnx and onnxruntime are the onnx extra, which CI installs (without it
their tests skip, and fail in CI); transformers' parity runs where it is
importable (CI installs it beside the CPU PyTorch)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import minivit as mv
from minivit.io import huggingface, pretrained, safetensors_file
from minivit.io.checkpoint import CheckpointError
from helpers import needs

pytest.importorskip("safetensors", reason="pip install safetensors (CI installs it)")
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
CLASSES = list("abcde")


def random_params(cfg, seed=0, dtype="float32"):
    """Weights that are nowhere near their initialisation (a zero head would hide a wrong mapping)."""
    rng = np.random.default_rng(seed)
    return {k: (v.astype(np.float64) + rng.standard_normal(v.shape) * 0.2).astype(dtype)
            for k, v in mv.init_params(cfg, seed=seed).items()}


def images(cfg, n=4, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, cfg.in_channels, cfg.image_size, cfg.image_size),
                                                dtype=np.uint8)


def logits(params, cfg, imgs):
    return mv.forward(params, mv.data.normalize(imgs, MEAN, STD, dtype=next(iter(params.values())).dtype), cfg,
                      keep_cache=False)[0]


VARIANTS = [dict(), dict(pool="gap"), dict(pos_embed="sincos"), dict(gelu="tanh", layer_scale=0.1),
            dict(pos_embed="sincos", pool="gap")]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_timm_safetensors_round_trip(tmp_path, kw):
    cfg = mv.ViTConfig.preset("test", **kw)
    params = random_params(cfg)
    path = safetensors_file.save_timm(tmp_path / "m.safetensors", params, cfg, CLASSES, MEAN, STD)
    sd, meta = safetensors_file.read_safetensors(path)
    assert meta["format"] == "pt" and set(sd) == set(mv.to_timm(params, cfg))
    back, cfg2, info = pretrained.load_pretrained(path)
    assert cfg2 == cfg and info == {"classes": CLASSES, "mean": MEAN, "std": STD}
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])


def test_a_foreign_timm_file_is_read_off_its_shapes(tmp_path):
    """A timm file without minivit's metadata: the config from the shapes; heads from the caller or the paper."""
    cfg = mv.ViTConfig.preset("test", num_classes=7)
    params = random_params(cfg)
    path = safetensors_file.write_safetensors(tmp_path / "timm.safetensors", mv.to_timm(params, cfg), {"format": "pt"})
    with pytest.raises(CheckpointError, match="does not say how many attention heads"):
        pretrained.load_pretrained(path)
    back, cfg2, info = pretrained.load_pretrained(path, heads=cfg.heads)
    assert cfg2 == cfg and info == {}
    np.testing.assert_allclose(logits(back, cfg2, images(cfg)), logits(params, cfg, images(cfg)))
    tiny = mv.ViTConfig(image_size=32, patch_size=16, dim=192, depth=1, heads=3, mlp_dim=768, num_classes=3)
    path = safetensors_file.write_safetensors(tmp_path / "ti.safetensors", mv.to_timm(random_params(tiny), tiny), {"format": "pt"})
    assert pretrained.load_pretrained(path)[1].heads == 3                      # the paper's Ti: 192 wide, 3 heads


@pytest.mark.parametrize("key,message", [("reg_token", "register or distillation"), ("fc_norm.weight", "after average"),
                                         ("blocks.0.attn.q_norm.weight", "would ignore|does not use")])
def test_timm_weights_minivit_cannot_hold_are_refused_by_name(tmp_path, key, message):
    cfg = mv.ViTConfig.preset("test")
    sd = mv.to_timm(random_params(cfg), cfg)
    sd[key] = np.ones((1, 1, cfg.dim) if key == "reg_token" else (cfg.dim,), np.float32)
    path = safetensors_file.write_safetensors(tmp_path / "x.safetensors", sd, {"format": "pt"})
    with pytest.raises(CheckpointError, match=message) as e:
        pretrained.load_pretrained(path, heads=cfg.heads)
    assert key in str(e.value)


def test_bfloat16_is_refused_unless_widened(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    params = random_params(cfg)
    sd = {k: v.astype(np.float32) for k, v in mv.to_timm(params, cfg).items()}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for k, v in sd.items():
        bits = (v.view(np.uint32) >> 16).astype("<u2").tobytes()       # float32 -> bfloat16, truncated
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [offset, offset + len(bits)]}
        blobs.append(bits)
        offset += len(bits)
    h = json.dumps(header).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    with pytest.raises(CheckpointError, match="bfloat16"):
        pretrained.load_pretrained(path, heads=cfg.heads)
    back, _, _ = pretrained.load_pretrained(path, heads=cfg.heads, bfloat16=True)
    w = params["blocks.0.mlp.fc1.w"]
    assert back["blocks.0.mlp.fc1.w"].dtype == np.float32 and np.abs(back["blocks.0.mlp.fc1.w"] - w).max() <= np.abs(w).max() / 128


@pytest.mark.parametrize("kw", [dict(), dict(pos_embed="sincos"), dict(gelu="tanh")], ids=["learned", "sincos", "tanh"])
def test_transformers_folder_round_trip(tmp_path, kw):
    cfg = mv.ViTConfig.preset("test", **kw)
    params = random_params(cfg)
    folder = huggingface.save_hf(tmp_path / "hf", params, cfg, CLASSES, MEAN, STD)
    config = json.loads((folder / "config.json").read_text())
    assert config["layer_norm_eps"] == cfg.ln_eps and config["id2label"]["4"] == "e"
    assert json.loads((folder / "preprocessor_config.json").read_text())["image_mean"] == MEAN
    back, cfg2, info = pretrained.load_pretrained(folder)
    assert info == {"classes": CLASSES, "mean": MEAN, "std": STD}
    np.testing.assert_allclose(logits(back, cfg2, images(cfg)), logits(params, cfg, images(cfg)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,message", [(dict(pool="gap"), "pool='gap'"), (dict(pos_embed="learned2d"), "learned2d"),
                                        (dict(layer_scale=0.1), "LayerScale")])
def test_what_transformers_cannot_hold_is_refused(tmp_path, kw, message):
    cfg = mv.ViTConfig.preset("test", **kw)
    with pytest.raises(ValueError, match=message):
        huggingface.save_hf(tmp_path / "hf", random_params(cfg), cfg)


def test_a_transformers_model_with_a_mask_token_or_no_classifier_is_refused(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    folder = huggingface.save_hf(tmp_path / "hf", random_params(cfg), cfg)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "use_mask_token": True}))
    with pytest.raises(CheckpointError, match="mask token"):
        pretrained.load_pretrained(folder)
    sd, _ = safetensors_file.read_safetensors(folder / "model.safetensors")
    del sd["classifier.weight"], sd["classifier.bias"]
    safetensors_file.write_safetensors(folder / "model.safetensors", sd, {"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no 'classifier.weight'"):
        pretrained.load_pretrained(folder)


def test_transformers_gives_minivits_logits(tmp_path):
    """transformers' own ViTForImageClassification, from the exported folder: the same logits in float32,
    and with float64 weights on both sides to 1e-10."""
    torch = pytest.importorskip("torch", reason="transformers parity needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers parity: pip install transformers")
    cfg = mv.ViTConfig.preset("test", num_classes=5)
    params = random_params(cfg)
    folder = huggingface.save_hf(tmp_path / "hf", params, cfg, CLASSES, MEAN, STD)
    model = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    imgs = images(cfg)
    x = mv.data.normalize(imgs, MEAN, STD)
    with torch.no_grad():
        theirs = model(pixel_values=torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(theirs, logits(params, cfg, imgs), rtol=1e-5, atol=1e-5)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}          # float64 on both sides
    safetensors_file.write_safetensors(folder / "model.safetensors", huggingface.to_hf(p64, cfg), {"format": "pt"})
    model = transformers.ViTForImageClassification.from_pretrained(folder, dtype=torch.float64).eval()
    with torch.no_grad():
        theirs = model(pixel_values=torch.from_numpy(x.astype(np.float64))).logits.numpy()
    ours = mv.forward(p64, x.astype(np.float64), cfg, keep_cache=False)[0]
    assert theirs.dtype == np.float64 and np.abs(theirs - ours).max() / np.abs(ours).max() < 1e-10


def test_a_folder_transformers_saved_opens_in_minivit(tmp_path):
    """The other direction: transformers' own save_pretrained, read by load_pretrained, the same logits."""
    torch = pytest.importorskip("torch", reason="transformers parity needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers parity: pip install transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                                    image_size=8, patch_size=4, num_labels=3, layer_norm_eps=1e-6)
    model = transformers.ViTForImageClassification(config).eval()
    for p_ in model.parameters():                                      # away from the zero-ish initialisation
        torch.nn.init.normal_(p_, std=0.3)
    model.save_pretrained(tmp_path / "theirs")
    params, cfg, info = pretrained.load_pretrained(tmp_path / "theirs")
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.num_classes, cfg.ln_eps) == (8, 2, 2, 3, 1e-6)
    assert info["classes"] == ["LABEL_0", "LABEL_1", "LABEL_2"] and "mean" not in info
    x = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        theirs = model(pixel_values=torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(mv.forward(params, x, cfg, keep_cache=False)[0], theirs, rtol=1e-5, atol=1e-5)


onnx_variants = [dict(), dict(pool="gap", gelu="tanh"), dict(pos_embed="learned2d"), dict(pos_embed="sincos", layer_scale=0.3),
                 dict(pos_embed_every_layer=True), dict(pos_embed="none")]


@pytest.mark.parametrize("kw", onnx_variants, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_the_onnx_graph_passes_the_checker_and_gives_minivits_logits(tmp_path, kw):
    needs("onnx", 'pip install -e ".[onnx]"')
    ort = needs("onnxruntime", 'pip install -e ".[onnx]"')
    from minivit.io.onnx_graph import save_onnx
    cfg = mv.ViTConfig.preset("test", **kw)
    params = random_params(cfg)
    path = save_onnx(tmp_path / "m.onnx", params, cfg, MEAN, STD, CLASSES)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 6):                                                   # the batch is dynamic
        imgs = images(cfg, n)
        got = session.run(["logits"], {"image": (imgs / 255.0).astype(np.float32)})[0]
        want = logits(params, cfg, imgs)
        assert got.shape == (n, cfg.num_classes)
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_onnx_refuses_what_it_cannot_express():
    needs("onnx", 'pip install -e ".[onnx]"')
    from minivit.io.onnx_graph import to_onnx
    for kw in (dict(pos_embed="relative"), dict(preset="cifar-hybrid")):
        cfg = mv.ViTConfig.preset(kw.pop("preset", "test"), **kw)
        with pytest.raises(ValueError, match="ONNX export"):
            to_onnx(random_params(cfg), cfg, MEAN, STD)


def test_cli_export_every_format_and_finetune_from_a_safetensors(tmp_path, monkeypatch):
    """The user's path: train, export to each format, fine-tune from the timm file and evaluate the hf folder."""
    from datagen import image_folder_files, write_folder
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))
    data = write_folder(tmp_path / "data", image_folder_files(classes=tuple("abcde"), size=8, per_class=(6, 2)))
    run = lambda *a: subprocess.run([sys.executable, "-m", "minivit", *a], capture_output=True, text=True)
    r = run("train", "--data", str(data), "--preset", "test", "--epochs", "1", "--batch-size", "8",
            "--out", str(tmp_path / "run"), "--no-progress")
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "run" / "checkpoint.npz")
    for fmt, out in (("timm", "m.safetensors"), ("hf", "hf"), ("npz", "m.npz")):
        r = run("export", ckpt, "--format", fmt, "--out", str(tmp_path / out))
        assert r.returncode == 0 and (tmp_path / out).exists(), r.stderr
    r = run("evaluate", str(tmp_path / "hf"), "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr
    r0 = run("evaluate", ckpt, "--json")
    assert json.loads(r.stdout)["accuracy"] == json.loads(r0.stdout)["accuracy"]
    r = run("finetune", str(tmp_path / "m.safetensors"), "--data", str(data), "--epochs", "1", "--batch-size", "8",
            "--image-size", "16", "--out", str(tmp_path / "ft"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert mv.load_checkpoint(tmp_path / "ft" / "checkpoint.npz")[1].image_size == 16
    needs("onnx", 'pip install -e ".[onnx]"')   # the last format, ONNX, is an extra: without it, the rest has run
    r = run("export", ckpt, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0 and (tmp_path / "m.onnx").exists(), r.stderr


def test_the_official_npz_refuses_layer_scale_instead_of_dropping_it(tmp_path):
    from minivit.io.jax_npz import save_jax_npz
    cfg = mv.ViTConfig.preset("test", layer_scale=0.1)
    with pytest.raises(ValueError, match="layer_scale=0.1"):
        save_jax_npz(tmp_path / "x.npz", random_params(cfg), cfg)


@pytest.mark.parametrize("kw,message", [(dict(gelu="tanh"), "GELU form"), (dict(ln_eps=1e-5), "eps")])
def test_the_official_npz_refuses_what_it_cannot_record(tmp_path, kw, message):
    from minivit.io.jax_npz import save_jax_npz
    cfg = mv.ViTConfig.preset("test", **kw)
    with pytest.raises(ValueError, match=message):
        save_jax_npz(tmp_path / "x.npz", random_params(cfg), cfg)


def test_timm_refuses_a_pretraining_model_by_name():
    cfg = mv.ViTConfig.preset("test", head="mpp")
    with pytest.raises(ValueError, match="masked-patch-prediction"):
        mv.to_timm(random_params(cfg), cfg)


def test_transformers_labels_must_number_the_classes(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    folder = huggingface.save_hf(tmp_path / "hf", random_params(cfg), cfg, CLASSES)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i + 1): c for i, c in enumerate(CLASSES)}          # 1 .. K, not 0 .. K-1
    (folder / "config.json").write_text(json.dumps(config))
    sd, _ = safetensors_file.read_safetensors(folder / "model.safetensors")                  # a file without minivit's metadata
    safetensors_file.write_safetensors(folder / "model.safetensors", sd, {"format": "pt"})
    with pytest.raises(CheckpointError, match="0 .. K-1"):
        pretrained.load_pretrained(folder)


def test_export_names_its_suffixes_and_never_overwrites_its_input(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    path = safetensors_file.save_timm(tmp_path / "m.safetensors", random_params(cfg), cfg, CLASSES, MEAN, STD)
    run = lambda *a: subprocess.run([sys.executable, "-m", "minivit", "export", *a], capture_output=True, text=True)
    r = run(str(path), "--format", "timm", "--out", str(path))
    assert r.returncode == 1 and "is the file being exported" in r.stderr
    r = run(str(path), "--format", "onnx", "--out", str(tmp_path / "m.npz"))
    assert r.returncode == 1 and "writes a .onnx file" in r.stderr
    assert pretrained.load_pretrained(path)[1] == cfg                                   # untouched


def test_timm_loads_the_exported_file_and_gives_minivits_logits(tmp_path):
    """timm's own VisionTransformer, load_state_dict(strict=True) from the exported .safetensors. Runs where
    timm is importable; timm needs torchvision, which does not import beside the CPU PyTorch 2.13 that
    CI installs, so there it is skipped (the GPU machine's image has timm)."""
    torch = pytest.importorskip("torch", reason="timm parity needs torch")
    pytest.importorskip("timm", reason="timm is not importable here (it needs torchvision)")
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer
    for pool, timm_pool in (("token", "token"), ("gap", "avg")):
        cfg = mv.ViTConfig(image_size=16, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32, num_classes=5, pool=pool)
        params = random_params(cfg)
        path = safetensors_file.save_timm(tmp_path / f"{pool}.safetensors", params, cfg)
        model = VisionTransformer(img_size=16, patch_size=4, num_classes=5, embed_dim=16, depth=2, num_heads=2,
                                  mlp_ratio=2.0, qkv_bias=True, global_pool=timm_pool, fc_norm=False).eval()
        model.load_state_dict(load_file(str(path)), strict=True)
        x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            theirs = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(theirs, mv.forward(params, x, cfg, keep_cache=False)[0], rtol=1e-5, atol=1e-5)

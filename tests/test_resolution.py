"""Changing resolution: position embeddings resampled as the paper's code (bilinear) and PyTorch (bicubic) do."""
import numpy as np
import pytest
from scipy import ndimage

import minivit as mv
from minivit.config import ConfigError
from minivit.models.resolution import bicubic_matrix, bilinear_matrix, resample_grid

rng = np.random.default_rng(0)


@pytest.mark.parametrize("g_old,g_new", [(8, 12), (8, 4), (7, 7), (14, 24), (3, 10)])
def test_bilinear_is_scipy_zoom_order_1(g_old, g_new):
    """The original ViT code: scipy.ndimage.zoom(grid, (g_new/g_old, g_new/g_old, 1), order=1)."""
    grid = rng.standard_normal((g_old, g_old, 5))
    ref = ndimage.zoom(grid, (g_new / g_old, g_new / g_old, 1), order=1)
    assert ref.shape == (g_new, g_new, 5)
    np.testing.assert_allclose(resample_grid(grid, g_new, "bilinear"), ref, atol=1e-12)


@pytest.mark.parametrize("g_old,g_new", [(8, 12), (8, 5), (4, 4), (14, 24), (2, 9)])
def test_bicubic_is_torch_interpolate(g_old, g_new):
    torch = pytest.importorskip("torch")
    grid = rng.standard_normal((g_old, g_old, 3))
    t = torch.from_numpy(grid.transpose(2, 0, 1)[None])               # (1, D, g, g)
    ref = torch.nn.functional.interpolate(t, size=(g_new, g_new), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(resample_grid(grid, g_new, "bicubic"), ref[0].numpy().transpose(1, 2, 0), atol=1e-12)


@pytest.mark.parametrize("n_in,n_out", [(8, 4), (8, 6), (8, 12), (5, 9), (3, 1), (1, 4)])
def test_bilinear_with_centres_aligned_is_torch_interpolate(n_in, n_out):
    """align_corners=False places the samples as the images' bicubic resize does (pixel centres)."""
    torch = pytest.importorskip("torch")
    grid = rng.standard_normal((n_in, n_in))
    ref = torch.nn.functional.interpolate(torch.from_numpy(grid)[None, None], size=(n_out, n_out), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    R = bilinear_matrix(n_out, n_in, align_corners=False)
    np.testing.assert_allclose(R @ grid @ R.T, ref, atol=1e-12)
    if n_in > 1:
        assert not np.allclose(R, bilinear_matrix(n_out, n_in))  # the corners are not where the centres are


def test_interpolation_matrices_keep_constants():
    for m in (bilinear_matrix, bicubic_matrix, lambda o, i: bilinear_matrix(o, i, align_corners=False)):
        for n_out, n_in in ((5, 8), (12, 8), (8, 8)):
            np.testing.assert_allclose(m(n_out, n_in).sum(axis=1), 1.0, atol=1e-12)  # rows are weights summing to 1
    np.testing.assert_allclose(bilinear_matrix(6, 6), np.eye(6), atol=1e-15)


def test_resize_pos_embed_keeps_class_token_and_runs():
    cfg = mv.ViTConfig.preset("test")                    # 8x8 images, patch 4: a 2x2 grid
    params = mv.init_params(cfg, seed=1, dtype="float64")
    new, cfg48 = mv.resize_pos_embed(params, cfg, 16)    # 4x4 grid
    assert cfg48.image_size == 16 and cfg48.num_patches == 16
    assert new["pos_embed"].shape == (1, 17, cfg.dim)
    np.testing.assert_array_equal(new["pos_embed"][:, 0], params["pos_embed"][:, 0])
    assert params["pos_embed"].shape == (1, 5, cfg.dim)  # the input is not modified
    # the corners of the grid are kept exactly (aligned corners)
    grid_old = params["pos_embed"][0, 1:].reshape(2, 2, -1)
    grid_new = new["pos_embed"][0, 1:].reshape(4, 4, -1)
    np.testing.assert_allclose(grid_new[[0, 0, -1, -1], [0, -1, 0, -1]], grid_old[[0, 0, -1, -1], [0, -1, 0, -1]])
    logits, _ = mv.forward(new, rng.standard_normal((2, 3, 16, 16)), cfg48)
    assert logits.shape == (2, cfg.num_classes)
    same, cfg_same = mv.resize_pos_embed(params, cfg, 8)
    assert cfg_same == cfg and same["pos_embed"] is params["pos_embed"]
    with pytest.raises(ConfigError, match="cannot run this model on 10x10"):
        mv.resize_pos_embed(params, cfg, 10)
    with pytest.raises(ValueError, match="method must be"):
        mv.resize_pos_embed(params, cfg, 16, method="nearest")


def test_sincos_model_only_changes_its_config():
    cfg = mv.ViTConfig.preset("test", pos_embed="sincos")
    params = mv.init_params(cfg, seed=1, dtype="float64")
    new, cfg16 = mv.resize_pos_embed(params, cfg, 16)
    assert "pos_embed" not in new and cfg16.num_patches == 16
    assert mv.forward(new, rng.standard_normal((1, 3, 16, 16)), cfg16)[0].shape == (1, cfg.num_classes)


def test_resize_images_is_torch_bicubic_on_uint8():
    torch = pytest.importorskip("torch")
    from minivit.models.resolution import resize_images
    imgs = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    ref = torch.nn.functional.interpolate(torch.from_numpy(imgs).double(), size=(12, 12), mode="bicubic",
                                          align_corners=False).round().clamp(0, 255).byte().numpy()
    got = resize_images(imgs, 12)
    assert got.dtype == np.uint8 and got.shape == (3, 3, 12, 12)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # float32 arithmetic may round a .5 the other way


def test_every_layer_tables_are_resized_and_other_variants_refused():
    cfg = mv.ViTConfig.preset("test", pos_embed_every_layer=True)
    params = mv.init_params(cfg, seed=1, dtype="float64")
    new, cfg16 = mv.resize_pos_embed(params, cfg, 16)
    assert all(new[f"blocks.{i}.pos_embed"].shape == (1, 17, cfg.dim) for i in range(cfg.depth))
    assert mv.forward(new, rng.standard_normal((1, 3, 16, 16)), cfg16)[0].shape == (1, cfg.num_classes)
    for variant in ("learned2d", "relative"):
        c = mv.ViTConfig.preset("test", pos_embed=variant)
        with pytest.raises(ConfigError, match=f"pos_embed='{variant}' is not resampled"):
            mv.resize_pos_embed(mv.init_params(c), c, 16)


# ---------------------------------------------------------------- progressive resizing (--resize-schedule)

@pytest.mark.parametrize("G,g", [(4, 2), (4, 3), (5, 3), (3, 1)])
def test_the_table_resampled_to_a_smaller_grid_has_the_transpose_as_gradient(G, g):
    """Inside the training step the learned table (kept at the final grid) is resampled to the batch's grid;
    the resampling is linear, so its backward is its transpose: checked against finite differences."""
    from helpers import check_grads, scalar_of
    from minivit.layers.resample import resample_table_backward, resample_table_forward
    table = rng.standard_normal((1, G * G + 1, 3))
    R = rng.standard_normal((1, g * g + 1, 3))
    out, cache = resample_table_forward(table, g)
    assert out.shape == (1, g * g + 1, 3)
    np.testing.assert_array_equal(out[:, 0], table[:, 0])                      # the class token's row is kept
    check_grads(scalar_of(lambda: resample_table_forward(table, g)[0], R), {"table": table},
                {"table": resample_table_backward(R, cache)})


def test_the_table_at_its_own_grid_is_unchanged():
    from minivit.layers.resample import resample_table_forward
    table = rng.standard_normal((1, 17, 6))
    np.testing.assert_allclose(resample_table_forward(table, 4)[0], table, atol=1e-14)


def test_a_vit_trains_on_smaller_images_with_the_final_grids_table():
    """The whole model on 8x8 images with the table of a 16x16 model: its gradients (the table's through
    the resampling) against finite differences, in float64."""
    from dataclasses import replace
    from helpers import check_grads
    cfg = mv.ViTConfig(image_size=16, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=16)
    small = replace(cfg, image_size=8)
    params = {k: v.astype(np.float64) for k, v in mv.init_params(cfg, seed=2).items()}
    params["head.w"] = rng.standard_normal(params["head.w"].shape) * 0.1            # a head that is not zero
    x, y = rng.standard_normal((3, 3, 8, 8)), np.array([0, 2, 1])

    def loss():
        return float(mv.cross_entropy(mv.forward(params, x, small)[0], y)[0])
    logits, cache = mv.forward(params, x, small)
    grads = mv.backward(mv.cross_entropy(logits, y)[1], cache)
    assert grads["pos_embed"].shape == params["pos_embed"].shape == (1, 17, 8)
    check_grads(loss, {k: params[k] for k in ("pos_embed", "patch_embed.w", "cls_token")}, grads)


def test_the_batch_is_resized_as_torch_interpolate_does():
    torch = pytest.importorskip("torch")
    from minivit.layers.resample import resize_batch
    x = rng.standard_normal((2, 3, 32, 32))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=(24, 24), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(resize_batch(x, 24), ref.numpy(), atol=1e-12)


def test_a_resize_schedule_trains_early_steps_on_smaller_images(tmp_path):
    from helpers import toy_dataset
    from minivit.config import TrainConfig
    from minivit.io.checkpoint import load_checkpoint
    from minivit.train import Trainer
    cfg = mv.ViTConfig.preset("test")                                    # 8x8 images, patch 4
    tcfg = TrainConfig(epochs=2, batch_size=8, seed=0, threads=1, resize_schedule="4:0.5")
    tr = Trainer(cfg, tcfg, toy_dataset(), tmp_path / "run", progress=False, log=lambda *_: None, plots=False)
    seen, original = [], tr.engine.loss_and_grads
    tr.engine.loss_and_grads = lambda *a, **k: seen.append(a[1].shape[-1]) or original(*a, **k)
    tr._warm_up = lambda: None     # its step on 2 images (compiling the kernels) is no training step
    tr.fit()
    assert seen == [4, 4, 4, 8, 8, 8]                                    # 3 steps an epoch: half the steps at 4x4
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[3]["train_config"]["resize_schedule"] == "4:0.5"
    assert np.isfinite(tr.history[-1]["train_loss"])


@pytest.mark.parametrize("spec, model, message", [
    ("16:0.3,12:0.6", {}, "increasing sizes"), ("16", {}, "SIZE:PROGRESS"), ("16:1.5", {}, "progress in (0, 1]"),
    ("4:0.5", {"pos_embed": "learned2d"}, "cannot follow the grid"), ("6:0.5", {}, "multiples of the patch size")])
def test_a_resize_schedule_that_cannot_work_is_named(tmp_path, spec, model, message):
    from helpers import toy_dataset
    from minivit.config import TrainConfig
    from minivit.train import Trainer
    import re
    with pytest.raises(ValueError, match=re.escape(message)):
        cfg = mv.ViTConfig.preset("test", **model)
        Trainer(cfg, TrainConfig(batch_size=8, resize_schedule=spec), toy_dataset(), tmp_path, progress=False)

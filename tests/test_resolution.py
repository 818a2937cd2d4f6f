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


def test_interpolation_matrices_keep_constants():
    for m in (bilinear_matrix, bicubic_matrix):
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

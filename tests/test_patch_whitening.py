"""Patch-whitening initialisation (--patch-init whiten, models/init.whiten_patch_embed): the projection's outputs
over the images' patches are uncorrelated with the variances the derivation gives, the trainer starts from it, and
what cannot take it says so."""
import json

import numpy as np
import pytest

import minivit as mv
from minivit.config import TrainConfig
from minivit.data.transforms import normalize
from minivit.layers.conv import patch_embed_forward
from minivit.models.init import WHITEN_EPS, whiten_patch_embed
from minivit.train import Trainer
from helpers import toy_dataset

QUIET = dict(progress=False, log=lambda *_: None, plots=False)


def _smooth_images(n, size, seed=0):
    """Images whose neighbouring pixels and channels are correlated, as natural images' are: white noise summed
    along rows and columns, mixed across channels. Their patches' covariance is far from the identity."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size)).cumsum(axis=2).cumsum(axis=3)
    x = np.einsum("ij,njhw->nihw", np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.4], [0.1, 0.6, 1.0]]), x)
    return (x - x.mean()) / x.std()


@pytest.mark.parametrize("patch, dim", [(4, 8), (2, 32)])
def test_the_whitened_outputs_are_uncorrelated_with_variances_lambda_over_lambda_plus_eps(patch, dim):
    cfg = mv.ViTConfig(image_size=8, patch_size=patch, num_classes=5, dim=dim, depth=1, heads=2, mlp_dim=16)
    params = mv.init_params(cfg, seed=1, dtype="float64")
    x = _smooth_images(200, 8)
    new = whiten_patch_embed(params, x, cfg)
    # The patches as the model's own projection cuts them (im2col), not as the function reshapes them.
    tokens, (cols, _, _) = patch_embed_forward(x, new["patch_embed.w"], new["patch_embed.b"])
    lam = np.linalg.eigvalsh(np.cov(cols, rowvar=False))[::-1]          # descending
    n = cols.shape[1]
    k = min(dim // 2, n)
    out = tokens.reshape(-1, dim)
    gain = lam[:k] / (lam[:k] + WHITEN_EPS)
    expected = np.block([[np.diag(gain), -np.diag(gain)], [-np.diag(gain), np.diag(gain)]])   # a filter and its negative
    np.testing.assert_allclose(np.cov(out[:, :2 * k], rowvar=False), expected, atol=1e-9)
    np.testing.assert_allclose(out[:, :2 * k].mean(axis=0), 0.0, atol=1e-9)   # the bias centres them
    assert lam[0] / lam[k - 1] > 10       # the images' patches were far from white, so the test can tell
    # rows past 2k keep their initialisation; so does every other parameter
    np.testing.assert_array_equal(new["patch_embed.w"][2 * k:], params["patch_embed.w"][2 * k:])
    np.testing.assert_array_equal(new["patch_embed.b"][2 * k:], params["patch_embed.b"][2 * k:])
    assert all(new[key] is params[key] for key in params if not key.startswith("patch_embed."))
    assert (2 * k < dim) == (patch == 2)   # the second case has rows past 2k; the first has more directions than rows


def test_the_parameters_keep_their_dtype_and_the_input_is_checked():
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=0)
    new = whiten_patch_embed(params, _smooth_images(10, 8), cfg)
    assert new["patch_embed.w"].dtype == np.float32 and new["patch_embed.w"].shape == params["patch_embed.w"].shape
    with pytest.raises(ValueError, match=r"images of the model's shape \(3, 8, 8\), got \(3, 16, 16\)"):
        whiten_patch_embed(params, _smooth_images(10, 16), cfg)
    hybrid = mv.ViTConfig(image_size=8, patch_size=2, num_classes=5, dim=8, depth=1, heads=2, mlp_dim=16,
                          stem_channels=(8,), stem_strides=(2,))
    with pytest.raises(ValueError, match="hybrid"):
        whiten_patch_embed(mv.init_params(hybrid), _smooth_images(10, 8), hybrid)


def test_the_trainer_starts_from_the_whitening_of_its_training_images(tmp_path):
    cfg = mv.ViTConfig.preset("test")
    data = toy_dataset(n_train=40)
    tcfg = TrainConfig(epochs=1, batch_size=8, threads=1, patch_init="whiten", val_split=10)
    trainer = Trainer(cfg, tcfg, data, tmp_path / "run", **QUIET)
    fresh = mv.init_params(cfg, seed=0)
    train_images = trainer.data.train.images            # the 30 left after the held-out 10
    assert len(train_images) == 30
    expected = whiten_patch_embed(fresh, normalize(train_images, trainer.mean, trainer.std, dtype="float64"), cfg)
    for key in fresh:
        np.testing.assert_allclose(trainer.params[key], expected[key], rtol=1e-6, atol=1e-7)
    assert not np.allclose(trainer.params["patch_embed.w"], fresh["patch_embed.w"])
    trainer.fit()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["patch_init"] == "whiten"


def test_what_has_no_image_patch_projection_refuses_it(tmp_path):
    data, tcfg = toy_dataset(), TrainConfig(epochs=1, batch_size=8, threads=1, patch_init="whiten")
    cfg = mv.ViTConfig.preset("test")
    with pytest.raises(ValueError, match="fine-tuning"):
        Trainer(cfg, tcfg, data, tmp_path / "a", init=mv.init_params(cfg), **QUIET)
    from minivit.models.cnn import CNNConfig
    with pytest.raises(ValueError, match="no image patch projection"):
        Trainer(CNNConfig(image_size=8, num_classes=5, channels=(4, 8)), tcfg, data, tmp_path / "b", **QUIET)
    with pytest.raises(ValueError, match="--patch-init must be one of whiten"):
        TrainConfig(patch_init="zca")


def test_the_command_line_takes_it():
    from minivit.cli.parser import _parser, train_config
    assert train_config(_parser().parse_args(["train", "--patch-init", "whiten"])).patch_init == "whiten"
    assert train_config(_parser().parse_args(["train"])).patch_init == ""

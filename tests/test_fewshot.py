"""Few-shot linear evaluation and the linear probe (minivit/tools/fewshot.py), and `minivit fewshot`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minivit as mv
from minivit.tools.fewshot import features, fewshot_accuracy, linear_probe, logistic_loss_and_grad, ridge_fit
from minivit.tools.gradcheck import check_grads

rng = np.random.default_rng(0)
ASSET = Path(__file__).parent.parent / "notebooks" / "assets" / "vit-cifar10-tiny.npz"


def clusters(per_class, noise_seed, K=4, D=6, spread=0.3):
    """K well-separated Gaussian clusters in D dimensions (fixed centres, new noise per seed):
    features a linear map separates."""
    centres = np.random.default_rng(0).standard_normal((K, D)) * 3
    y = np.repeat(np.arange(K), per_class)
    return centres[y] + spread * np.random.default_rng(noise_seed).standard_normal((len(y), D)), y


def test_ridge_fit_is_the_regularised_least_squares_solution():
    X, Y, l2 = rng.standard_normal((20, 5)), rng.standard_normal((20, 3)), 0.7
    # ||X W - Y||^2 + l2 ||W||^2 is the plain least squares of the stacked system [X; sqrt(l2) I] W = [Y; 0]
    stacked = np.linalg.lstsq(np.vstack([X, np.sqrt(l2) * np.eye(5)]), np.vstack([Y, np.zeros((5, 3))]), rcond=None)[0]
    assert np.allclose(ridge_fit(X, Y, l2), stacked, rtol=1e-10, atol=1e-12)


def test_logistic_regression_gradient():
    X, y, l2 = rng.standard_normal((9, 4)), rng.integers(0, 3, 9), 0.3
    X[:, -1] = 1.0                                   # the bias column, as _standardise appends it
    W = rng.standard_normal((4, 3))
    _, dW = logistic_loss_and_grad(W, X, y, l2)
    check_grads(lambda: logistic_loss_and_grad(W, X, y, l2)[0], {"W": W}, {"W": dW})


def test_fewshot_and_probe_separate_separable_classes():
    train_x, train_y = clusters(30, noise_seed=1)
    test_x, test_y = clusters(10, noise_seed=2)
    acc, sd = fewshot_accuracy(train_x, train_y, test_x, test_y, shots=5, num_classes=4, draws=3, l2=1.0)
    assert acc == 1.0 and sd == 0.0
    acc, loss = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, steps=200)
    assert acc == 1.0 and loss < 0.1 * np.log(4)     # far below the loss of a uniform guess


def test_fewshot_on_unrelated_features_is_near_chance():
    x, y = rng.standard_normal((400, 8)), rng.integers(0, 4, 400)
    acc, _ = fewshot_accuracy(x[:300], y[:300], x[300:], y[300:], shots=10, num_classes=4, draws=5)
    assert acc < 0.45                                 # chance is 0.25; 100 test labels, 5 draws


def test_fewshot_needs_enough_images_per_class():
    x, y = clusters(3, noise_seed=1)
    with pytest.raises(ValueError, match="5-shot needs 5 training images of every class"):
        fewshot_accuracy(x, y, x, y, shots=5, num_classes=4)


def test_features_are_what_the_head_reads():
    cfg = mv.ViTConfig.preset("test")
    params = mv.init_params(cfg, seed=0, dtype="float64")
    params["head.w"] = rng.standard_normal(params["head.w"].shape)
    images = rng.integers(0, 256, (7, 3, 8, 8)).astype(np.uint8)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    f = features(params, images, cfg, mean, std, batch_size=3)        # three batches: 3, 3, 1
    logits = mv.forward(params, mv.data.normalize(images, mean, std, dtype="float64"), cfg)[0]
    assert f.shape == (7, cfg.dim)
    assert np.allclose(f @ params["head.w"] + params["head.b"], logits, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not ASSET.exists(), reason="the trained notebook checkpoint is not in this checkout")
def test_cli_fewshot_on_the_trained_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minivit", "fewshot", str(ASSET), "--data", "subset",
                        "--shots", "1", "5", "--draws", "2", "--no-probe", "--json"],
                       capture_output=True, text=True, env={**os.environ, "MINIVIT_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["classes"] == 10 and set(out["fewshot"]) == {"1", "5"}
    assert out["machine"]["cpu"] and out["checkpoint"] == str(ASSET)   # what a raw file needs to name its figures
    # a model trained on CIFAR-10 separates the classes from a handful of examples (chance: 10%)
    assert out["fewshot"]["5"]["accuracy"] > 0.4


def test_cli_fewshot_rejects_bad_flags():
    r = subprocess.run([sys.executable, "-m", "minivit", "fewshot", str(ASSET), "--shots", "0"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--shots must be >= 1" in r.stderr

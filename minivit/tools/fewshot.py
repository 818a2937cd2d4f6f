"""How good is a frozen representation? Linear few-shot accuracy and a linear probe (paper section 4.1).

The paper measures pre-trained models two ways besides fine-tuning. Few-shot linear accuracy
"solves a regularized least-squares regression problem that maps the (frozen) representation
of a subset of training images to {-1, 1}^K target vectors": with k images per class, features
X (n, D) and targets Y (n, K), Y[i, c] = 1 for the image's class and -1 otherwise,

    W = argmin ||X W - Y||^2 + l2 ||W||^2 = (X^T X + l2 I)^{-1} X^T Y,       prediction argmax_c (x W)_c

in closed form, averaged over several random draws of the k shots. A linear probe fits a
multinomial logistic regression (softmax + cross-entropy, L2 penalty) on all the training
features by full-batch gradient descent. Both read the representation the head sees: the
class token (or the mean of the patch tokens, pool='gap') after the final LayerNorm.

    minivit fewshot runs/<time>/checkpoint.npz --data subset --shots 1 5 10 25
"""
from dataclasses import replace

import numpy as np

from ..layers.attention import softmax
from ..backend import get_array_module, to_device, to_numpy
from ..data.transforms import normalize
from ..train.engine import Engine, blas_single_thread


def features(params, images, cfg, mean, std, batch_size=500, threads=2):
    """images (B, C, H, W) uint8 -> (B, D) float64: the representation the head reads.

    Images are normalised with the training statistics (mean, std) a batch at a time and run
    through the trainer's inference engine (minivit/train/trainer.py: shards on every core). The model
    runs with its head replaced by the identity, so its "logits" are the pooled, normalised
    token (the "pre-logits")."""
    dtype = params["cls_token"].dtype
    body = dict(params, **{"head.w": to_device(np.eye(cfg.dim), dtype), "head.b": to_device(np.zeros(cfg.dim), dtype)})
    xp = get_array_module(body["head.w"])
    engine = Engine(replace(cfg, num_classes=cfg.dim, head="classify"), threads)  # (a pre-training model has no class head)
    try:
        with blas_single_thread(engine.threads):
            parts = [to_numpy(engine.predict_logits(body, normalize(images[i:i + batch_size], mean, std, xp, dtype)))
                     for i in range(0, len(images), batch_size)]
    finally:
        engine.close()
    return np.concatenate(parts).astype(np.float64)


def _standardise(train, test):
    """Centre and scale both with the training features' statistics, and append a constant 1 (the bias)."""
    mu, sd = train.mean(axis=0), train.std(axis=0) + 1e-6
    one = lambda a: np.concatenate([(a - mu) / sd, np.ones((len(a), 1))], axis=1)
    return one(train), one(test)


def ridge_fit(X, Y, l2):
    """W = (X^T X + l2 I)^{-1} X^T Y: the minimiser of ||X W - Y||^2 + l2 ||W||^2."""
    A = X.T @ X + l2 * np.eye(X.shape[1])               # (D, D), symmetric positive definite for l2 > 0
    return np.linalg.solve(A, X.T @ Y)                  # (D, K)


def fewshot_accuracy(train_x, train_y, test_x, test_y, shots, num_classes, draws=5, l2=100.0, seed=0):
    """Mean and standard deviation over `draws` of the test accuracy of a ridge map fitted to
    `shots` random training images per class. Features are (n, D) arrays, labels (n,) ints.

    The features are standardised with the shots' own statistics, so X^T X grows like n I and
    l2 is measured against n = shots x classes. A small penalty lets the map interpolate its
    targets when n is close to D, where least squares is at its noisiest (the "double descent"
    peak): with the shipped tiny model on the subset, l2 = 1 gave 68, 67, 66 and 72% at 1, 5, 10
    and 25 shots (n = 10 to 250, D = 64), l2 = 100 gave 68, 72, 73 and 74%."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(train_y == c) for c in range(num_classes)]
    short = [c for c, idx in enumerate(by_class) if len(idx) < shots]
    if short:
        raise ValueError(f"{shots}-shot needs {shots} training images of every class; classes {short} have fewer")
    accs = []
    for _ in range(draws):
        pick = np.concatenate([rng.choice(idx, shots, replace=False) for idx in by_class])
        X, Xt = _standardise(train_x[pick], test_x)
        Y = -np.ones((len(pick), num_classes))
        Y[np.arange(len(pick)), train_y[pick]] = 1.0      # {-1, 1}^K targets
        W = ridge_fit(X, Y, l2)
        accs.append(float(((Xt @ W).argmax(axis=1) == test_y).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def logistic_loss_and_grad(W, X, y, l2):
    """Mean cross-entropy of softmax(X W) against labels y, plus l2/2 ||W||^2 (the bias row
    excluded from the penalty), and its gradient X^T (P - onehot) / n + l2 W."""
    n = len(y)
    P = softmax(X @ W)                                   # (n, K)
    loss = -np.log(P[np.arange(n), y] + 1e-300).mean()
    G = P
    G[np.arange(n), y] -= 1.0                            # dloss/dlogits = (P - onehot) / n
    dW = X.T @ G / n
    Wp = W.copy()
    Wp[-1] = 0.0                                         # the bias row is not penalised
    return loss + 0.5 * l2 * (Wp * Wp).sum(), dW + l2 * Wp


def linear_probe(train_x, train_y, test_x, test_y, num_classes, l2=1e-3, steps=500):
    """Test accuracy of a logistic regression on frozen features, by full-batch gradient descent.
    Returns (accuracy, training loss at the last step).

    The step is 1 / L, L = lambda_max(X^T X / n) / 2 + l2 a bound on the loss's curvature (the
    softmax's Jacobian diag(p) - p p^T has eigenvalues at most 1/2), so every step lowers the loss."""
    X, Xt = _standardise(train_x, test_x)
    lr = 1.0 / (0.5 * np.linalg.eigvalsh(X.T @ X / len(X))[-1] + l2)
    W = np.zeros((X.shape[1], num_classes))
    for _ in range(steps):
        loss, dW = logistic_loss_and_grad(W, X, train_y, l2)
        W -= lr * dW
    return float(((Xt @ W).argmax(axis=1) == test_y).mean()), float(loss)

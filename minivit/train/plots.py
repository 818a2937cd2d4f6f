"""Training curves and confusion matrices as PNG files.

Figures are drawn with matplotlib's object API (matplotlib.figure.Figure), which needs no
display and leaves pyplot's backend alone, so saving a plot during training does not stop
a notebook's own plt.show() from displaying.
"""
import numpy as np


def _figure(**kw):
    from matplotlib.figure import Figure
    return Figure(**kw)


def plot_curves(history, path, accuracy="accuracy", train_loss_label="train"):
    """Loss and accuracy per epoch, train and test, side by side; `accuracy` names what is counted,
    `train_loss_label` what the training loss is (the objective minimised: label-smoothed, say).
    A figure recorded as null (not finite) is left out of its line."""
    ep = [h["epoch"] for h in history]
    col = lambda key: [np.nan if h.get(key) is None else h[key] for h in history]
    on_val = any("val_loss" in h for h in history)       # what scored the epochs: the validation or test set
    key, held = ("val", "validation") if on_val else ("test", "test")
    fig = _figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    a.plot(ep, col("train_loss"), "o-", label=train_loss_label)
    a.plot(ep, col(key + "_loss"), "o-", label=held)
    a.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    b.plot(ep, col("train_acc"), "o-", label="train")
    b.plot(ep, col(key + "_acc"), "o-", label=held)
    if on_val:   # the test set, read once at the end: a single point
        for ax, key in ((a, "test_loss"), (b, "test_acc")):
            ax.plot(ep, col(key), "k*", markersize=10, label="test (once, at the end)")
    b.set(xlabel="epoch", ylabel="accuracy", title=accuracy)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def confusion_matrix(labels, preds, k):
    """Counts (K, K): row = true class, column = predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(preds)), 1)
    return m


def plot_confusion(labels, preds, classes, path, title=None):
    k = len(classes)
    m = confusion_matrix(labels, preds, k)
    fig = _figure(figsize=(7, 6))
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, m[i, j], ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return m

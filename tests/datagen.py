"""Tiny datasets built by the tests: the official CIFAR-10 python format and image folders."""
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np


def cifar_batch_bytes(n, seed):
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"test batch", b"labels": [int(v) for v in rng.integers(0, 10, n)],
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    return pickle.dumps(d, protocol=2), d


def write_official_archive(path, n=6, members=None):
    """A cifar-10-python.tar.gz with 5 train batches and a test batch of n images each."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    contents = {}
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate(names):
            data, d = cifar_batch_bytes(n, i)
            if members and name in members:
                data = members[name]
            contents[name] = d
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return contents


def png_bytes(img):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def image_folder_files(classes=("cat", "dog"), size=8, per_class=(4, 2), seed=0):
    """{relative path: png bytes} for train/<class>/ and test/<class>/, lossless PNGs."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            for i in range(n):
                files[f"toy/{split}/{c}/{i:03d}.png"] = png_bytes(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return files


def write_folder(root, files):
    for rel, data in files.items():
        p = Path(root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return Path(root) / "toy"


def write_targz(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for rel, data in files.items():
            z.writestr(rel, data)
    return path

"""The official CIFAR-10 (the python version): its archive or extracted folder, read without running any
code from the pickles, and downloaded once (checked by its md5) when no copy is given."""
import io
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from .splits import DataError, Dataset, Split, cache_dir, file_md5

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _CifarUnpickler(pickle.Unpickler):
    """Accepts only what the CIFAR-10 batches contain: dicts, lists, bytes, ints and
    NumPy arrays. Any other global (os.system, builtins.eval, ...) is refused, so a
    tampered file cannot run code while it loads."""
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of the CIFAR-10 format")


def _load_cifar_batch(data, where):
    try:
        d = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{where}: {e}") from None
    except Exception as e:  # truncated or garbled pickle
        raise DataError(f"{where}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{where}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    x = np.asarray(d[b"data"], dtype=np.uint8)
    y = np.asarray(d[b"labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise DataError(f"{where}: data has shape {x.shape} for {len(y)} labels; expected (N, 3072)")
    return x.reshape(-1, 3, 32, 32), y


BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def load_cifar10_python(path):
    """The official `cifar-10-python.tar.gz`, or the `cifar-10-batches-py` folder extracted from it."""
    path = Path(path)
    blobs = _batches_in_folder(path) if path.is_dir() else _batches_in_archive(path)
    train = [_load_cifar_batch(blobs[n], f"{path}:{n}") for n in BATCHES[:5]]
    test = _load_cifar_batch(blobs["test_batch"], f"{path}:test_batch")
    tr = Split(np.concatenate([a for a, _ in train]), np.concatenate([b for _, b in train]))
    return Dataset(tr, Split(*test), CIFAR10_CLASSES, "cifar10")


def _batches_in_folder(path):
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    missing = [n for n in BATCHES if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root}: missing {missing[0]}; expected the cifar-10-batches-py folder")
    return {n: (root / n).read_bytes() for n in BATCHES}


def _batches_in_archive(path):
    blobs = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar.getmembers():
                base = m.name.rsplit("/", 1)[-1]
                if base in BATCHES and m.isfile():
                    blobs[base] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: truncated or corrupted archive ({e}); delete it and download again") from None
    missing = [n for n in BATCHES if n not in blobs]
    if missing:
        raise DataError(f"{path}: not the CIFAR-10 python archive (missing {', '.join(missing)})")
    return blobs


def download_cifar10(dest=None, url=CIFAR10_URL, md5=CIFAR10_MD5):
    """Download the official archive (with a progress bar) unless a verified copy is cached."""
    dest = Path(dest) if dest else cache_dir() / "cifar-10-python.tar.gz"
    if dest.exists() and file_md5(dest) == md5:
        return dest
    from tqdm import tqdm
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="downloading CIFAR-10") as bar:
                for block in iter(lambda: r.read(1 << 16), b""):
                    f.write(block)
                    bar.update(len(block))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not download CIFAR-10 from {url} ({e}). Without network, copy "
                        f"cifar-10-python.tar.gz to {dest} or pass its path with --data PATH") from None
    if file_md5(tmp) != md5:
        tmp.unlink()
        raise DataError(f"downloaded CIFAR-10 archive has the wrong md5 (expected {md5}); try again")
    os.replace(tmp, dest)
    return dest


def load_cifar10(path=None):
    """Official CIFAR-10: from `path` (archive or folder), else the cache, else downloaded."""
    if path is None:
        path = download_cifar10()
    elif Path(path).is_file():
        digest = file_md5(path)
        if digest != CIFAR10_MD5:
            raise DataError(f"{path}: md5 {digest} does not match the official CIFAR-10 archive "
                            f"({CIFAR10_MD5}); the file is corrupted or not cifar-10-python.tar.gz")
    return load_cifar10_python(path)

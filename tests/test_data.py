"""Data loaders on tiny archives built here, including tampered and truncated ones."""
import hashlib
import http.server
import os
import pickle
import threading

import numpy as np
import pytest

from minivit.data import cifar10 as data, image_folder, transforms
from minivit.data import DataError, load_dataset
from datagen import (image_folder_files, png_bytes, write_folder, write_official_archive, write_targz,
                     write_zip)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVIT_CACHE", str(tmp_path / "cache"))


def test_official_format_round_trip(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    contents = write_official_archive(path, n=6)
    ds = data.load_cifar10_python(path)
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.test.images.shape == (6, 3, 32, 32)
    assert ds.classes == data.CIFAR10_CLASSES
    # row-major 3072 = 3 x 32 x 32, channel first (the format's documented layout)
    np.testing.assert_array_equal(ds.test.images.reshape(6, -1), contents["test_batch"][b"data"])
    np.testing.assert_array_equal(ds.train.labels[:6], contents["data_batch_1"][b"labels"])


def test_official_extracted_folder(tmp_path):
    import tarfile
    path = tmp_path / "cifar-10-python.tar.gz"
    write_official_archive(path)
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path, filter="data")
    ds = load_dataset(str(tmp_path / "cifar-10-batches-py"))
    assert ds.train.images.shape == (30, 3, 32, 32)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    path = tmp_path / "cifar-10-python.tar.gz"
    write_official_archive(path, members={"data_batch_3": evil})
    with pytest.raises(DataError, match=r"data_batch_3: refused to load (posix|os)\.system"):
        data.load_cifar10_python(path)
    assert not marker.exists()


def test_truncated_archive(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_official_archive(path, n=200)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupted"):
        data.load_cifar10_python(path)


def test_md5_mismatch_is_named(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_official_archive(path)
    with pytest.raises(DataError, match="does not match the official CIFAR-10 archive"):
        data.load_cifar10(path)


def test_download_without_network_says_how_to_use_a_local_copy(tmp_path):
    with pytest.raises(DataError, match="could not download.*--data PATH"):
        data.download_cifar10(tmp_path / "c.tar.gz", url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert not (tmp_path / "c.tar.gz").exists()


def test_download_from_loopback_verifies_md5(tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    write_official_archive(served / "cifar-10-python.tar.gz")
    md5 = hashlib.md5((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/cifar-10-python.tar.gz"
    try:
        dest = data.download_cifar10(tmp_path / "dl.tar.gz", url=url, md5=md5)
        assert data.load_cifar10_python(dest).train.images.shape == (30, 3, 32, 32)
        with pytest.raises(DataError, match="wrong md5"):
            data.download_cifar10(tmp_path / "dl2.tar.gz", url=url, md5="0" * 32)
        assert not (tmp_path / "dl2.tar.gz").exists()
    finally:
        httpd.shutdown()


@pytest.mark.parametrize("kind", ["folder", "targz", "zip"])
def test_image_folder_formats(tmp_path, kind):
    files = image_folder_files()
    path = {"folder": lambda: write_folder(tmp_path / "f", files),
            "targz": lambda: write_targz(tmp_path / "toy.tar.gz", files),
            "zip": lambda: write_zip(tmp_path / "toy.zip", files)}[kind]()
    ds = load_dataset(str(path))
    assert ds.classes == ("cat", "dog")
    assert ds.train.images.shape == (8, 3, 8, 8) and ds.test.images.shape == (4, 3, 8, 8)
    assert sorted(np.bincount(ds.train.labels)) == [4, 4]
    from PIL import Image
    import io
    first = np.asarray(Image.open(io.BytesIO(files["toy/train/cat/000.png"])))
    np.testing.assert_array_equal(ds.train.images[0], first.transpose(2, 0, 1))
    again = load_dataset(str(path))  # from the cache this time
    np.testing.assert_array_equal(again.train.images, ds.train.images)
    assert list((tmp_path / "cache").glob("imagefolder-*.npz"))


def test_image_folder_without_classes(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no classes found"):
        load_dataset(str(tmp_path / "empty"))


def test_unreadable_image_is_named(tmp_path):
    files = image_folder_files()
    files["toy/train/dog/bad.jpg"] = b"this is not a jpeg"
    with pytest.raises(DataError, match="unreadable image .*train/dog/bad.jpg"):
        load_dataset(str(write_targz(tmp_path / "toy.tar.gz", files)))


def test_mixed_sizes(tmp_path):
    files = image_folder_files()
    files["toy/train/dog/big.png"] = png_bytes(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match="images of different sizes"):
        load_dataset(str(write_folder(tmp_path / "f", files)))


def test_truncated_image_archive(tmp_path):
    files = image_folder_files(per_class=(40, 10))
    path = write_targz(tmp_path / "toy.tar.gz", files)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DataError, match="truncated or corrupted"):
        load_dataset(str(path))


def test_missing_path():
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset("/nonexistent/cifar")


def test_shipped_subset_is_balanced():
    ds = load_dataset("subset")
    assert ds.classes == data.CIFAR10_CLASSES
    assert ds.train.images.shape[1:] == (3, 32, 32)
    counts = np.bincount(ds.train.labels, minlength=10)
    assert counts.min() == counts.max() >= 300
    assert np.bincount(ds.test.labels, minlength=10).min() >= 50


def test_make_subset_is_balanced_and_deterministic(tmp_path):
    src = write_targz(tmp_path / "toy.tar.gz", image_folder_files(per_class=(6, 3)))
    a = image_folder.make_subset(src, tmp_path / "a.tar.gz", train_per_class=2, test_per_class=1)
    b = image_folder.make_subset(src, tmp_path / "b.tar.gz", train_per_class=2, test_per_class=1)
    assert a.read_bytes() == b.read_bytes()
    ds = load_dataset(str(a))
    assert np.bincount(ds.train.labels).tolist() == [2, 2] and np.bincount(ds.test.labels).tolist() == [1, 1]


def test_normalize_and_channel_stats():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (50, 3, 4, 4), dtype=np.uint8)
    mean, std = transforms.channel_stats(imgs)
    x = transforms.normalize(imgs, mean, std)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_augment_shapes_determinism_and_crops():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)
    a = transforms.augment(imgs, np.random.default_rng(5))
    b = transforms.augment(imgs, np.random.default_rng(5))
    assert a.shape == imgs.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, transforms.augment(imgs, np.random.default_rng(6)))
    # replay the same draws and cut each crop out by hand
    r = np.random.default_rng(5)
    oy, ox, flip = r.integers(0, 9, 16), r.integers(0, 9, 16), r.random(16) < 0.5
    pad = np.pad(imgs, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for i in range(16):
        crop = pad[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        np.testing.assert_array_equal(a[i], crop[:, :, ::-1] if flip[i] else crop)
    np.testing.assert_array_equal(transforms.augment(imgs, rng, pad=0, flip=False), imgs)

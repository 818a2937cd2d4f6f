"""Image folders: `train/<class>/*` and `test/<class>/*` (any leading folder) in a folder, a .tar.gz or a .zip,
decoded once with Pillow and cached by content; single images for `predict`; and make_subset, which writes
the shipped subset's kind of archive."""
import gzip
import hashlib
import io
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_write, remove_stale_temporaries
from .splits import DataError, Dataset, Split, cache_dir, file_md5

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


MAX_IMAGE_PIXELS = 50_000_000  # about 7000 x 7000: far beyond any ViT input, and 150 MB once decoded


def _is_16bit(im):
    """Pillow's modes for 16-bit (and 32-bit integer) images: 'I;16', 'I;16B', 'I;16L', 'I'."""
    return im.mode.startswith("I;16") or im.mode == "I"


def _to_rgb_array(im):
    """A Pillow image -> (H, W, 3) uint8. 16-bit images are scaled to 8 bits:
    convert('RGB') would clip their 0..65535 values at 255 and turn the image white."""
    if _is_16bit(im):
        v = np.asarray(im).astype(np.float64)
        hi = 65535.0 if im.mode != "I" or v.max() > 255 else 255.0
        g = np.clip(np.rint(v * (255.0 / hi)), 0, 255).astype(np.uint8)  # (H, W)
        return np.repeat(g[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(source, size=None, resize=False, where=None):
    """An image file (a path or its bytes) -> (3, H, W) uint8, refusing huge or unreadable files.

    The pixel count is read from the header and checked before anything is decoded, so a
    decompression bomb costs nothing. With `size`, an image of another size is resized when
    `resize` is set and refused otherwise.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError
    where = where or str(source)
    try:
        with warnings.catch_warnings():  # Pillow warns about large images; the size is checked here instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"{where}: image is {w}x{h} pixels, more than minivit reads "
                                f"({MAX_IMAGE_PIXELS:,}); resize it first")
            if size is not None and (w, h) != (size, size):
                if not resize:
                    raise DataError(f"{where}: image is {w}x{h}, the model expects {size}x{size}; "
                                    "pass --resize to resize it")
                im = im if _is_16bit(im) else im.convert("RGB")
                im = im.resize((size, size), Image.BILINEAR)
            return _to_rgb_array(im).transpose(2, 0, 1)
    except DataError:
        raise
    except Image.DecompressionBombError as e:  # Pillow refuses the largest at open(), before our check
        raise DataError(f"{where}: image has more pixels than minivit reads ({MAX_IMAGE_PIXELS:,}); "
                        f"resize it first ({e})") from None
    except UnidentifiedImageError:  # Pillow's message names its BytesIO object, not the file
        empty = isinstance(source, bytes) and not source or not isinstance(source, bytes) and _is_empty(source)
        raise DataError(f"{where}: cannot read image ({'the file is empty' if empty else 'not an image format Pillow reads'})") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: cannot read image ({e})") from None


def _is_empty(path):
    try:
        return os.path.getsize(path) == 0
    except (OSError, TypeError):
        return False


def _decode(data, where):
    return read_image(data, where=f"unreadable image {where}").transpose(1, 2, 0)  # (H, W, 3)


def _is_metadata(parts):
    """macOS archive litter: __MACOSX/ folders and ._name resource forks are not images."""
    return "__MACOSX" in parts or parts[-1].startswith("._")


def _walk(root, rel=Path(), ancestors=frozenset()):
    """Every entry under the folder `root` that is not a folder, as paths relative to it, following
    symlinked folders (a class folder may be a link). A link back to a folder it lies in would loop
    for ever, so a folder whose real path is one of its own ancestors' is not entered again; two
    links to the same folder elsewhere are both read."""
    folder = Path(root) / rel
    real = os.path.realpath(folder)
    if real in ancestors:
        return
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():           # follows links
            yield from _walk(root, rel / entry.name, ancestors | {real})
        else:
            yield rel / entry.name


def _iter_files(path):
    """(relative path parts, bytes) for every file in a folder, .tar.gz or .zip."""
    path = Path(path)
    if path.is_dir():
        return _iter_folder(path)
    return _iter_zip(path) if zipfile.is_zipfile(path) else _iter_tar(path)


def _iter_folder(path):
    for rel in _walk(path):
        f = path / rel
        if f.is_file():
            yield rel.parts, f.read_bytes()


def _iter_zip(path):
    with zipfile.ZipFile(path) as z:
        for name in sorted(n for n in z.namelist() if not n.endswith("/")):
            try:
                data = z.read(name)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
                    RuntimeError) as e:      # RuntimeError: an encrypted member wants a password
                raise DataError(f"{path}: corrupted archive member {name} ({e}); "
                                "unpack it again or re-create the .zip") from None
            yield tuple(Path(name).parts), data


def _iter_tar(path):
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if m.isfile():
                    yield tuple(Path(m.name).parts), tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: truncated or corrupted archive ({e})") from None


# Bumped when the decoded arrays of the same files change (v2: images in one canonical order).
CACHE_VERSION = 2


def _folder_key(path):
    p = Path(path).resolve()
    if p.is_dir():
        stats = [(str(rel), (p / rel).stat().st_size, (p / rel).stat().st_mtime_ns) for rel in _walk(p)
                 if (p / rel).is_file()]          # a broken link is no file: skipped, as when reading
        return hashlib.sha256(repr((CACHE_VERSION, stats)).encode()).hexdigest()[:16]
    return hashlib.sha256(f"{CACHE_VERSION}:{p}:{file_md5(p)}".encode()).hexdigest()[:16]


def _split_and_class(parts):
    """(split, class, the path inside the class folder) of an image at `parts`, or None.

    The split is the last `train` or `test` folder with a class folder below it; an image may sit
    deeper, in a subfolder of its class (train/cat/indoor/1.jpg is a cat)."""
    for i in range(len(parts) - 3, -1, -1):
        if parts[i] in ("train", "test"):
            return parts[i], parts[i + 1], "/".join(parts[i + 2:])
    return None


def load_image_folder(path, use_cache=True):
    """`train/<class>/*` and `test/<class>/*` (any leading folder) from a folder, .tar.gz or .zip.

    Classes are the sorted folder names under train/. Images are decoded once with Pillow;
    the arrays are cached by the archive's content hash.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    cache = cache_dir() / f"imagefolder-{_folder_key(path)}.npz"
    remove_stale_temporaries(cache)
    if use_cache and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return Dataset(Split(z["train_x"], z["train_y"]), Split(z["test_x"], z["test_y"]),
                               tuple(z["classes"].tolist()), path.name)
        except Exception:  # truncated or corrupted (a full disk, a killed writer): decode again
            cache.unlink(missing_ok=True)
    found = {"train": [], "test": []}
    for parts, data in _iter_files(path):
        place = _split_and_class(parts)
        if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES or place is None or _is_metadata(parts):
            continue
        split, cls, inside = place
        found[split].append((cls, inside, "/".join(parts), data))
    for items in found.values():  # one order whatever the container (folder, .tar.gz, .zip): class, then path
        items.sort(key=lambda item: item[:3])      # class, path inside it, then the whole path
    found = {split: [(cls, name, data) for cls, _, name, data in items] for split, items in found.items()}
    classes = sorted({c for c, _, _ in found["train"]})
    if not classes:
        raise DataError(f"{path}: no classes found; expected images under train/<class>/ and test/<class>/")
    if not found["test"]:
        raise DataError(f"{path}: no test images found under test/<class>/")
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, items in found.items():
        unknown = sorted({c for c, _, _ in items} - set(index))
        if unknown:
            raise DataError(f"{path}: test classes {unknown} do not appear under train/")
        images = [_decode(data, name) for _, name, data in items]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise DataError(f"{path}: images of different sizes in {split}/ ({sorted(shapes)[:3]}); resize them first")
        x = np.stack(images).transpose(0, 3, 1, 2)  # (N, 3, H, W)
        y = np.array([index[c] for c, _, _ in items], dtype=np.int64)
        splits[split] = Split(np.ascontiguousarray(x), y)
    if splits["train"].images.shape[1:] != splits["test"].images.shape[1:]:
        raise DataError(f"{path}: train and test images differ in size")
    if use_cache:
        try:  # written atomically: a killed or concurrent first run cannot leave a half cache (minivit/atomic_files.py)
            with atomic_write(cache) as f:
                np.savez(f, train_x=splits["train"].images, train_y=splits["train"].labels,
                         test_x=splits["test"].images, test_y=splits["test"].labels, classes=np.array(classes))
        except OSError:  # a cache that cannot be written costs time, not the run
            pass
    return Dataset(splits["train"], splits["test"], tuple(classes), path.name)


def make_subset(source, dest, train_per_class=500, test_per_class=100, seed=0):
    """Write a class-balanced image-folder .tar.gz drawn from an image-folder archive,
    keeping the JPEG bytes as they are (no second lossy encoding)."""
    if min(train_per_class, test_per_class) < 1:
        raise DataError(f"make-subset needs at least one image per class, got {train_per_class} train and "
                        f"{test_per_class} test")
    rng = np.random.default_rng(seed)
    by_key = {}
    for parts, data in _iter_files(source):
        place = _split_and_class(parts)
        if place is not None and Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES and not _is_metadata(parts):
            split, cls, inside = place
            by_key.setdefault((split, cls), []).append((inside.replace("/", "_"), data))
    if not by_key:
        raise DataError(f"{source}: no train/<class>/ images found")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # gzip stream with no name and mtime 0, tar entries with mtime 0: same input, same bytes
    with atomic_write(dest) as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, filename="", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for (split, cls), files in sorted(by_key.items()):
            files.sort()
            n = train_per_class if split == "train" else test_per_class
            for i in sorted(rng.choice(len(files), min(n, len(files)), replace=False)):
                name, data = files[i]
                info = tarfile.TarInfo(f"cifar10-subset/{split}/{cls}/{name}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return dest

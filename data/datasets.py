"""Readers that turn each supported dataset into uint8 image tensors (N x 3 x H x W) and int64 labels.

Every reader returns the dataset's *official* train and test parts; splitting the test part into
validation and test is done once, for all datasets, in ``data/splits.py``.

On-disk formats are the ones torchvision's own downloaders produce, so a folder prepared with
``torchvision.datasets.CIFAR10(root, download=True)`` works here and vice versa:

* CIFAR-10:  ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (pickled dicts)
* CIFAR-100: ``<root>/cifar-100-python/{train, test}``
* SVHN:      ``<root>/{train_32x32.mat, test_32x32.mat}``
* ImageFolder: ``<root>/<class>/<image>`` (held out 30% as the test part by a fixed seed) or
  ``<root>/train/<class>/...`` with ``<root>/test`` (or ``val``) holding the same classes.
* digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images; no download); it has no
  official test part, so a fixed seed holds out 30% as one.

Bad input raises :class:`DatasetError` (a ``ValueError``) with one line naming the path and what
was expected, so command-line tools print it without a traceback.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import socket
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch


class DatasetError(ValueError):
    """A dataset folder or file is missing, empty or unreadable, or the dataset name is unknown."""


@dataclass
class RawDataset:
    """A dataset's official parts as uint8 tensors, before the validation/test split."""
    name: str
    num_classes: int
    train_x: torch.Tensor  # uint8 N x 3 x H x W
    train_y: torch.Tensor  # int64 N
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: List[str] = field(default_factory=list)
    flip: bool = True          # is a horizontal mirror image still the same class?
    rotate_deg: float = 0.0    # small random rotation used as augmentation
    # For datasets without an official test part: the seed that held one out and its indices into
    # the full dataset, recorded so anyone can rebuild the same split.
    holdout_seed: Optional[int] = None
    holdout_indices: Optional[List[int]] = None
    source: str = ""


# The fraction of a dataset without an official test part that becomes its "official" test part.
HOLDOUT_FRACTION = 0.3
# Fixed (not --split_seed) so that the training set is the same for every validation/test split seed,
# just as CIFAR's official test set does not depend on it.
HOLDOUT_SEED = 20240531


def holdout_split(n: int, fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED) -> Tuple[List[int], List[int]]:
    """(train indices, held-out indices), both sorted, drawn by a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_hold = int(round(n * fraction))
    return sorted(perm[n_hold:].tolist()), sorted(perm[:n_hold].tolist())


# --------------------------------------------------------------------------------------------------
# digits (scikit-learn, bundled)
# --------------------------------------------------------------------------------------------------
def _digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """(images 1797 x 8 x 8 in 0..16, labels) from scikit-learn's bundled copy.

    The CSV that ``sklearn.datasets.load_digits`` parses is read directly when it is where scikit-learn
    keeps it: importing scikit-learn (and SciPy with it) costs seconds per process, more than
    everything else in a small run. The API is the fallback, and a test checks both agree."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    if spec is None:
        raise DatasetError("--dataset digits needs scikit-learn (pip install scikit-learn)")
    from sklearn.datasets import load_digits
    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def load_digits_raw() -> RawDataset:
    pixels, target = _digits_arrays()
    # pixel values are 0..16 (counts of set pixels in 4x4 blocks of the original 32x32 bitmaps)
    grey = np.round(pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = torch.from_numpy(grey).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(target)
    train_idx, hold_idx = holdout_split(len(labels))
    return RawDataset(
        name="digits", num_classes=10,
        train_x=images[train_idx], train_y=labels[train_idx],
        test_x=images[hold_idx], test_y=labels[hold_idx],
        classes=[str(i) for i in range(10)],
        flip=False,  # a mirrored 2 or 7 is not a 2 or 7
        rotate_deg=10.0,
        holdout_seed=HOLDOUT_SEED, holdout_indices=hold_idx,
        source="scikit-learn digits (sklearn.datasets.load_digits)")


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's python-pickle layout)
# --------------------------------------------------------------------------------------------------
# Names a CIFAR batch may reference. Anything else in the file is refused, so a tampered or foreign
# pickle cannot run code while loading.
_SAFE_PICKLE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # numpy 2 renamed it; the old name only warns
        return super().find_class(module, name)


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    label_key: str
    num_classes: int
    torchvision_class: str


CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout("CIFAR-10", "cifar-10-batches-py",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                            "labels", 10, "CIFAR10"),
    "cifar100": _CifarLayout("CIFAR-100", "cifar-100-python", ("train",), ("test",),
                             "fine_labels", 100, "CIFAR100"),
}


def _read_cifar_batch(path: str, label_key: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: CIFAR batch file missing")
    try:
        with open(path, "rb") as f:
            # the batches were pickled by Python 2; latin1 maps its byte strings 1:1
            entry = _RestrictedUnpickler(f, encoding="latin1").load()
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable CIFAR batch ({exc.__class__.__name__}: {exc}); "
                           f"delete the folder and pass --download to fetch it again") from None
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise DatasetError(f"{path}: not a CIFAR batch (expected keys 'data' and {label_key!r}, found {keys})")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' should be uint8 rows of 3072 pixels, found {data.dtype} "
                           f"{tuple(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {len(labels)} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar_folder(name: str, data_dir: str) -> str:
    """The batch folder: ``data_dir/<folder>``, or ``data_dir`` itself when it is that folder."""
    layout = CIFAR_LAYOUTS[name]
    if os.path.basename(os.path.normpath(data_dir)) == layout.folder:
        return data_dir
    return os.path.join(data_dir, layout.folder)


# seconds a download waits for the server: offline, the training scripts say so instead of hanging
DOWNLOAD_TIMEOUT_S = 60


@contextlib.contextmanager
def _download_timeout():
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def not_downloaded(what: str, where: str, exc: Exception) -> DatasetError:
    """The one line of a dataset that is missing and could not be fetched: what, where, and the way
    to run without the internet."""
    reason = getattr(exc, "reason", None) or exc
    return DatasetError(f"{what} is not in {where} and could not be downloaded ({exc.__class__.__name__}: "
                        f"{reason}); copy it there from a machine that has it (data/README.md), or run "
                        f"offline with --dataset digits")


def download_cifar(name: str, data_dir: str) -> None:
    """Fetch the archive with torchvision's downloader (its URL and MD5), unless already present."""
    layout = CIFAR_LAYOUTS[name]
    folder = cifar_folder(name, data_dir)
    if all(os.path.isfile(os.path.join(folder, f)) for f in layout.train_files + layout.test_files):
        return
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive
    cls = getattr(tvd, layout.torchvision_class)
    try:
        with _download_timeout():
            download_and_extract_archive(cls.url, data_dir, filename=cls.filename, md5=cls.tgz_md5)
    except Exception as exc:
        raise not_downloaded(f"{layout.title} ({layout.folder}/)", data_dir, exc) from None


def load_cifar_raw(name: str, data_dir: str) -> RawDataset:
    layout = CIFAR_LAYOUTS[name]
    folder = cifar_folder(name, data_dir)
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder}: {layout.title} folder not found; pass --download to fetch it "
                           f"or point --data_dir at the folder that contains {layout.folder}/")
    parts = []
    for files in (layout.train_files, layout.test_files):
        xs, ys = zip(*(_read_cifar_batch(os.path.join(folder, f), layout.label_key, layout.num_classes)
                       for f in files))
        parts.append((torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))))
    (train_x, train_y), (test_x, test_y) = parts
    if len(train_y) == 0 or len(test_y) == 0:
        raise DatasetError(f"{folder}: {layout.title} batches hold no images")
    return RawDataset(name=name, num_classes=layout.num_classes, train_x=train_x, train_y=train_y,
                      test_x=test_x, test_y=test_y, flip=True, source=folder)


# --------------------------------------------------------------------------------------------------
# SVHN (torchvision's .mat files)
# --------------------------------------------------------------------------------------------------
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def download_svhn(data_dir: str) -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_url
    for split in ("train", "test"):
        url, filename, md5 = tvd.SVHN.split_list[split]
        if os.path.isfile(os.path.join(data_dir, filename)):
            continue
        try:
            with _download_timeout():
                download_url(url, data_dir, filename, md5)
        except Exception as exc:
            raise not_downloaded(f"SVHN ({filename})", data_dir, exc) from None


def _read_svhn(path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: SVHN file not found; pass --download to fetch it or point "
                           f"--data_dir at the folder holding {', '.join(SVHN_FILES.values())}")
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable SVHN .mat file ({exc.__class__.__name__}: {exc})") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DatasetError(f"{path}: 'X' should be uint8 32x32x3xN, found {x.dtype} {tuple(x.shape)}")
    labels = y.astype(np.int64).reshape(-1)
    labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(labels)


def load_svhn_raw(data_dir: str) -> RawDataset:
    train_x, train_y = _read_svhn(os.path.join(data_dir, SVHN_FILES["train"]))
    test_x, test_y = _read_svhn(os.path.join(data_dir, SVHN_FILES["test"]))
    return RawDataset(name="svhn", num_classes=10, train_x=train_x, train_y=train_y, test_x=test_x,
                      test_y=test_y, classes=[str(i) for i in range(10)], flip=False, source=data_dir)


# --------------------------------------------------------------------------------------------------
# ImageFolder (the user's own images)
# --------------------------------------------------------------------------------------------------
TRAIN_SUBFOLDER = "train"
TEST_SUBFOLDERS = ("test", "val")


def _scan_image_folder(root: str):
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise DatasetError(f"{root}: no class folders found; expected {root}/<class name>/<image files>") from None
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DatasetError(f"{root}: the class folders ({', '.join(classes[:5])}{'...' if len(classes) > 5 else ''}) "
                           f"hold no images ({', '.join(IMG_EXTENSIONS)})")
    labelled = {label for _, label in samples}
    empty = [os.path.join(root, c) for c in classes if class_to_idx[c] not in labelled]
    if empty:
        raise DatasetError(f"{', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''}: class folder(s) with no images "
                           f"({', '.join(IMG_EXTENSIONS)}); each would be a class with nothing to learn from: add "
                           f"images or remove the folder")
    if len(classes) < 2:
        raise DatasetError(f"{root}: found {len(classes)} class folder; a classifier needs at least 2")
    return classes, samples


def _decode_resized(path: str, size: int) -> np.ndarray:
    """Shorter side to ``size`` then centre crop, so the aspect ratio survives; returns 3 x size x size."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def _load_samples(samples, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    need = len(samples) * 3 * size * size
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:  # ImageFolder images are decoded at the input size, so the dataset grows with its square
        raise DatasetError(f"--input_size {size}: {len(samples)} images decoded at {size}x{size} px take "
                           f"{need / 2 ** 30:.1f} GB, more than the {have / 2 ** 30:.1f} GB of memory here; lower "
                           f"--input_size")
    images = np.empty((len(samples), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):  # once, at load time; never in the training loop
        images[i] = _decode_resized(path, size)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_image_folder_raw(data_dir: str, image_size: int = 32) -> RawDataset:
    if not data_dir or not os.path.isdir(data_dir):
        raise DatasetError(f"--data_dir {data_dir!r}: image folder not found; --dataset imagefolder "
                           f"expects DIR/<class>/<images> (or DIR/train and DIR/test)")
    if image_size <= 0:
        raise DatasetError(f"image size must be positive, got {image_size}")
    test_dir = next((os.path.join(data_dir, d) for d in TEST_SUBFOLDERS
                     if os.path.isdir(os.path.join(data_dir, d))), None)
    train_dir = os.path.join(data_dir, TRAIN_SUBFOLDER)
    if os.path.isdir(train_dir) and test_dir:
        classes, train_samples = _scan_image_folder(train_dir)
        test_classes, test_samples = _scan_image_folder(test_dir)
        if test_classes != classes:
            raise DatasetError(f"{test_dir}: class folders {test_classes} differ from {train_dir}'s {classes}")
        train_x, train_y = _load_samples(train_samples, image_size)
        test_x, test_y = _load_samples(test_samples, image_size)
        hold_seed, hold_idx = None, None
    else:
        classes, samples = _scan_image_folder(data_dir)
        images, labels = _load_samples(samples, image_size)
        train_idx, hold_idx = holdout_split(len(samples))
        if not train_idx or not hold_idx:
            raise DatasetError(f"{data_dir}: {len(samples)} images are too few to hold out a test part")
        train_x, train_y = images[train_idx], labels[train_idx]
        test_x, test_y = images[hold_idx], labels[hold_idx]
        hold_seed = HOLDOUT_SEED
    return RawDataset(name="imagefolder", num_classes=len(classes), train_x=train_x, train_y=train_y,
                      test_x=test_x, test_y=test_y, classes=list(classes), flip=True,
                      holdout_seed=hold_seed, holdout_indices=hold_idx, source=os.path.abspath(data_dir))

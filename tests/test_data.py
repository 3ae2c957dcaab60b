"""Datasets, splits and the on-device loader (CIFAR through files in its real pickled format, digits for real)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from data.datasets import HOLDOUT_FRACTION, DatasetError
from data.loader import DeviceLoader
from data.splits import DATASETS, DataSplits, load_splits, save_split_info
from Search_CIFAR10.training.data import add_data_args, build_loaders


def write_cifar(root, n_train_per_batch=4, n_test=20, cifar100=False, seed=0):
    """CIFAR's python layout: pickled dicts with 'data' (N x 3072 uint8, channel-major) and labels."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python" if cifar100 else "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    key = "fine_labels" if cifar100 else "labels"
    classes = 100 if cifar100 else 10
    files = (["train"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)])
    parts = {}
    for name, n in [(f, n_train_per_batch) for f in files] + [("test" if cifar100 else "test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"batch_label": name, "data": data, key: labels, "filenames": [f"{i}.png" for i in range(n)]},
                        f, protocol=2)
        parts[name] = (data, labels)
    return folder, parts


# -- digits (real data) ------------------------------------------------------------------------------
def test_digits_split_sizes_and_reproducibility():
    s = load_splits("digits", split_seed=0)
    held_out = int(round(1797 * HOLDOUT_FRACTION))
    assert len(s.train_y) == 1797 - held_out
    assert len(s.val_y) + len(s.test_y) == held_out
    assert len(s.val_y) == int(round(held_out * 0.6))
    assert sorted(s.val_indices + s.test_indices) == list(range(held_out))
    assert s.train_x.dtype == torch.uint8 and s.train_x.shape[1:] == (3, 8, 8)
    assert s.train_y.dtype == torch.int64 and set(s.train_y.tolist()) == set(range(10))
    assert s.flip is False and s.num_classes == 10
    again = load_splits("digits", split_seed=0)
    assert again.val_indices == s.val_indices and torch.equal(again.test_x, s.test_x)
    other = load_splits("digits", split_seed=1)
    assert other.val_indices != s.val_indices
    assert torch.equal(other.train_x, s.train_x), "the training set must not depend on the split seed"


def test_digits_fast_path_equals_sklearn_api():
    from sklearn.datasets import load_digits

    from data.datasets import _digits_arrays
    pixels, labels = _digits_arrays()
    bunch = load_digits()
    assert np.array_equal(pixels, bunch.images) and np.array_equal(labels, bunch.target)


def test_limits_are_deterministic_subsets():
    full = load_splits("digits")
    s = load_splits("digits", limit_train=50, limit_eval=20)
    assert len(s.train_y) == 50 and len(s.val_y) == 20 and len(s.test_y) == 20
    assert set(s.val_indices) <= set(full.val_indices) and set(s.test_indices) <= set(full.test_indices)
    assert load_splits("digits", limit_train=50, limit_eval=20).train_indices == s.train_indices
    assert s.mean == full.mean, "normalisation statistics come from the full training set"


# -- CIFAR in its real on-disk format ---------------------------------------------------------------
def test_cifar10_pickled_batches_load_and_split(tmp_path):
    folder, parts = write_cifar(str(tmp_path))
    s = load_splits("cifar10", data_dir=str(tmp_path), split_seed=3)
    assert len(s.train_y) == 20 and len(s.val_y) == 12 and len(s.test_y) == 8
    first = parts["data_batch_1"][0][0]
    # channel-major rows: the first 1024 bytes are the red plane
    assert torch.equal(s.train_x[0], torch.from_numpy(first.reshape(3, 32, 32)))
    assert s.train_y[:4].tolist() == parts["data_batch_1"][1]
    test_data, test_labels = parts["test_batch"]
    for i, j in enumerate(s.val_indices):
        assert torch.equal(s.val_x[i], torch.from_numpy(test_data[j].reshape(3, 32, 32)))
        assert s.val_y[i].item() == test_labels[j]
    assert s.flip is True
    # the folder itself is accepted as --data_dir too
    assert load_splits("cifar10", data_dir=folder, split_seed=3).val_indices == s.val_indices


def test_cifar100_layout(tmp_path):
    write_cifar(str(tmp_path), n_train_per_batch=10, n_test=10, cifar100=True)
    s = load_splits("cifar100", data_dir=str(tmp_path))
    assert s.num_classes == 100 and len(s.train_y) == 10 and len(s.val_y) == 6


def test_cifar_bad_folders(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py: CIFAR-10 folder not found; pass --download"):
        load_splits("cifar10", data_dir=str(tmp_path / "nowhere"))
    folder, _ = write_cifar(str(tmp_path))
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(DatasetError, match=r"data_batch_3: CIFAR batch file missing"):
        load_splits("cifar10", data_dir=str(tmp_path))
    with open(os.path.join(folder, "data_batch_3"), "wb") as f:
        f.write(b"\x80\x02garbage that is not a pickle")
    with pytest.raises(DatasetError, match=r"data_batch_3: not a readable CIFAR batch"):
        load_splits("cifar10", data_dir=str(tmp_path))
    with open(os.path.join(folder, "data_batch_3"), "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"data_batch_3: 'data' should be uint8 rows of 3072 pixels"):
        load_splits("cifar10", data_dir=str(tmp_path))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder, _ = write_cifar(str(tmp_path))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"test_batch: not a readable CIFAR batch .*refusing to load posix.mkdir"):
        load_splits("cifar10", data_dir=str(tmp_path))
    assert not marker.exists()


# -- ImageFolder and names --------------------------------------------------------------------------
def test_image_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cat", "dog")):
        os.makedirs(tmp_path / cls)
        for i in range(10):
            arr = rng.integers(0, 256, size=(20 + 7 * i, 30, 3), dtype=np.uint8)  # mixed sizes and shapes
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    s = load_splits("imagefolder", data_dir=str(tmp_path), image_size=16)
    assert s.num_classes == 2 and s.classes == ["cat", "dog"]
    assert s.train_x.shape[1:] == (3, 16, 16) and len(s.train_y) == 14 and len(s.val_y) + len(s.test_y) == 6
    assert s.holdout_indices is not None and len(s.holdout_indices) == 6


def test_image_folder_bad_input(tmp_path):
    with pytest.raises(DatasetError, match="needs --data_dir"):
        load_splits("imagefolder")
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"hold no images"):
        load_splits("imagefolder", data_dir=str(tmp_path))
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "b" / "broken2.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"broken.png: not a readable image"):
        load_splits("imagefolder", data_dir=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(DatasetError, match=r"--dataset: unknown dataset 'mnist'; expected one of digits"):
        load_splits("mnist")
    assert "cifar10" in DATASETS


# -- DeviceLoader -----------------------------------------------------------------------------------
def _images(n=24, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n)


def _loader(x, y, **kw):
    args = dict(batch_size=5, input_size=x.shape[-1], mean=(0.0,) * 3, std=(1.0,) * 3, shuffle=True,
                augment=True, flip=True, seed=7)
    args.update(kw)
    return DeviceLoader(x, y, **args)


def test_loader_is_deterministic_and_independent_of_global_rng():
    x, y = _images()
    a = _loader(x, y)
    a.set_epoch(3)
    torch.manual_seed(123)
    first = [(bx.clone(), by.clone()) for bx, by in a]
    torch.manual_seed(999)
    torch.rand(1000)
    b = _loader(x, y)
    b.set_epoch(3)
    second = list(b)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, second))
    b.set_epoch(4)
    assert not torch.equal(torch.cat([q[1] for q in b]), torch.cat([p[1] for p in first]))
    # an epoch visits every image exactly once (no drop_last, one rank)
    assert sorted(torch.cat([p[1] for p in first]).tolist()) == list(range(24))
    assert len(a) == 5 and first[-1][0].shape == (4, 3, 8, 8)


def test_loader_shards_across_ranks():
    x, y = _images(n=23)
    train = [_loader(x, y, rank=r, world_size=2) for r in range(2)]
    for t in train:
        t.set_epoch(1)
    seen = [torch.cat([b[1] for b in t]).tolist() for t in train]
    assert len(seen[0]) == len(seen[1]) == 12, "training shards are equal so DDP ranks step together"
    assert set(seen[0]) | set(seen[1]) == set(range(23))
    evals = [_loader(x, y, rank=r, world_size=2, shuffle=False, augment=False) for r in range(2)]
    got = sorted(torch.cat([torch.cat([b[1] for b in e]) for e in evals]).tolist())
    assert got == list(range(23)), "evaluation shards cover every image exactly once"


def test_augmentation_is_exact_flip_and_integer_crop():
    x, y = _images(n=16, size=8)
    base = x.float() / 255
    flips = _loader(x, y, shuffle=False, pad_fraction=0.0, jitter=0.0)
    outs = torch.cat([b[0] for b in flips])
    mirrored = [torch.equal(o, b.flip(-1)) for o, b in zip(outs, base)]
    same = [torch.equal(o, b) for o, b in zip(outs, base)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)
    crops = _loader(x, y, shuffle=False, flip=False, pad_fraction=0.25, jitter=0.0)  # 2 px at 8 px
    outs = torch.cat([b[0] for b in crops])
    padded = torch.nn.functional.pad(base, (2, 2, 2, 2))
    for o, p in zip(outs, padded):
        assert any(torch.allclose(o, p[:, 2 + dy:10 + dy, 2 + dx:10 + dx], atol=1e-6)
                   for dy in range(-2, 3) for dx in range(-2, 3)), "a translation is a crop of the padded image"


def test_plain_loader_resizes_and_normalises():
    x, y = _images(n=6, size=8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = _loader(x, y, shuffle=False, augment=False, input_size=16, mean=mean, std=std, batch_size=6)
    out, labels = next(iter(loader))
    ref = torch.nn.functional.interpolate(x.float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
    ref = (ref - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5) and torch.equal(labels, y)


def test_build_loaders_and_split_file(tmp_path):
    import argparse
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    args = parser.parse_args(["--dataset", "digits", "--limit_train", "40", "--limit_eval", "10", "--split_seed", "5"])
    splits, train, val, test = build_loaders(args, batch_size=16, input_size=32, device="cpu", seed=0)
    assert isinstance(splits, DataSplits) and len(train) == 2 and len(val) == 1
    xb, yb = next(iter(train))
    assert xb.shape == (16, 3, 32, 32) and yb.dtype == torch.int64
    path = tmp_path / "split.json"
    save_split_info(splits, str(path))
    info = json.loads(path.read_text())
    assert info["dataset"] == "digits" and info["split_seed"] == 5
    assert info["val_indices"] == splits.val_indices and info["sizes"] == {"train": 40, "val": 10, "select": 10, "test": 10}
    assert info["selection_fraction"] == 0.0 and info["selection_indices"] == info["val_indices"]
    assert info["holdout_seed"] is not None and len(info["holdout_indices"]) == 539


def test_svhn_mat_files(tmp_path):
    import scipy.io
    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 7), ("test_32x32.mat", 5)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3], [4], [5], [6]][:n], dtype=np.uint8)  # SVHN writes digit 0 as 10
        scipy.io.savemat(tmp_path / name, {"X": x, "y": y})
        if name.startswith("train"):
            first = x[..., 0]
    s = load_splits("svhn", data_dir=str(tmp_path))
    assert s.train_y.tolist() == [0, 1, 2, 3, 4, 5, 6] and s.flip is False
    assert torch.equal(s.train_x[0], torch.from_numpy(first.transpose(2, 0, 1).copy()))
    assert len(s.val_y) == 3 and len(s.test_y) == 2
    os.remove(tmp_path / "test_32x32.mat")
    with pytest.raises(DatasetError, match=r"test_32x32.mat: SVHN file not found; pass --download"):
        load_splits("svhn", data_dir=str(tmp_path))


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    from PIL import Image
    for part, n in (("train", 4), ("test", 5)):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / part / cls)
            for i in range(n):
                Image.new("RGB", (12, 12), (i * 40, 0, 200 if cls == "a" else 0)).save(tmp_path / part / cls / f"{i}.png")
    s = load_splits("imagefolder", data_dir=str(tmp_path), image_size=8)
    assert len(s.train_y) == 8 and len(s.val_y) + len(s.test_y) == 10 and s.holdout_seed is None
    os.makedirs(tmp_path / "test" / "c")
    # an empty class folder would be a class with no images: named, in either part
    with pytest.raises(DatasetError, match=r"test/c: class folder\(s\) with no images"):
        load_splits("imagefolder", data_dir=str(tmp_path), image_size=8)
    Image.new("RGB", (12, 12)).save(tmp_path / "test" / "c" / "0.png")
    with pytest.raises(DatasetError, match=r"class folders .* differ from"):
        load_splits("imagefolder", data_dir=str(tmp_path), image_size=8)
    os.makedirs(tmp_path / "train" / "c")
    with pytest.raises(DatasetError, match=r"train/c: class folder\(s\) with no images"):
        load_splits("imagefolder", data_dir=str(tmp_path), image_size=8)

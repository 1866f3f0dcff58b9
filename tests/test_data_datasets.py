"""vitkit.data data sets: the real files (counts, histograms, checksums from the raw bytes), formats, errors."""

import gzip
import hashlib
import lzma
import pickle

import numpy as np
import pytest
import torch
from conftest import require_data

from vitkit.data import (TRAIN_STATS, ImageDataset, SyntheticImageDataset, channel_stats, default_root,
                         load_dataset, make_synthetic)
from vitkit.data.download import verify_md5sums, md5sum
from vitkit.errors import ConfigError, DataError

# md5 of the *uncompressed* records, from shared/data/README.md (an independent reference for the decoder).
CIFAR_RECORD_MD5 = {"train_1": "e6bf4923448f89bce07b91ea904a0717", "train_2": "84ccdb9d074e227d9e365587dac4a1a7",
                    "train_3": "f81a3757d961d3b9ca58a6088c8a6251", "train_4": "de88ceea99ba1ccbff0abd0a298a885d",
                    "train_5": "d5f09c68bc10ce9a5b9d2533414da016", "test": "1658343f48ceda00cfd5e8c011d94bd3"}


# ------------------------------------------------------------------------------------------ Fashion-MNIST

@pytest.fixture(scope="module")
def fashion():
    root = require_data("fashion-mnist")
    return root, load_dataset("fashion-mnist", root=root, split="train"), load_dataset("fashion-mnist", root=root,
                                                                                       split="test")


def test_fashion_mnist_counts_histograms_and_pixels_match_raw_bytes(fashion):
    root, train, test = fashion
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    # Independent decode: gzip + numpy on the raw bytes, 16-byte image header, 8-byte label header.
    raw = gzip.open(root / "t10k-images-idx3-ubyte.gz").read()
    labels = np.frombuffer(gzip.open(root / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    assert int.from_bytes(raw[4:8], "big") == 10_000 and int.from_bytes(raw[:4], "big") == 2051
    for i in (0, 1, 4321, 9999):
        pixels = np.frombuffer(raw, np.uint8, count=784, offset=16 + 784 * i)
        assert int(test.images[i].sum()) == int(pixels.sum(dtype=np.int64))
        assert hashlib.sha256(test.images[i].numpy().tobytes()).hexdigest() == hashlib.sha256(pixels).hexdigest()
        assert int(test.labels[i]) == labels[i]
    assert test.labels[:5].tolist() == labels[:5].tolist()


def test_fashion_mnist_statistics_are_those_of_the_training_split(fashion):
    _, train, test = fashion
    mean, std = channel_stats(train.images)
    assert np.allclose(mean, TRAIN_STATS["fashion-mnist"][0], atol=5e-5)
    assert np.allclose(std, TRAIN_STATS["fashion-mnist"][1], atol=5e-5)
    assert test.mean == train.mean and test.std == train.std
    image, label = test[3]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28) and isinstance(label, int)
    assert torch.equal(image, test.images[3].float() / 255)


def test_md5_passes_on_real_files_and_fails_on_a_flipped_byte(tmp_path):
    root = require_data("fashion-mnist")
    assert sorted(verify_md5sums(root)) == sorted(p.name for p in root.glob("*.gz"))
    assert md5sum(root / "t10k-labels-idx1-ubyte.gz") == "bb300cfdad3c16e7a12a480ee83cd310"
    for name in ("t10k-labels-idx1-ubyte.gz", "MD5SUMS"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    (tmp_path / "MD5SUMS").write_text("bb300cfdad3c16e7a12a480ee83cd310  t10k-labels-idx1-ubyte.gz\n")
    assert verify_md5sums(tmp_path) == ["t10k-labels-idx1-ubyte.gz"]
    data = bytearray((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    data[100] ^= 0x01
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(data))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        verify_md5sums(tmp_path)


# ------------------------------------------------------------------------------------------------ CIFAR-10

@pytest.fixture(scope="module")
def cifar():
    root = require_data("cifar-10")
    return root, load_dataset("cifar10", root=root, split="train"), load_dataset("cifar10", root=root, split="test")


def _records(ds, start, stop):
    """Rebuild the 3073-byte binary records of samples start..stop-1: label byte, then R, G, B planes."""
    labels = ds.labels[start:stop].numpy().astype(np.uint8)[:, None]
    return np.concatenate([labels, ds.images[start:stop].reshape(stop - start, -1).numpy()], 1).tobytes()


def test_cifar10_counts_histograms_and_record_checksums(cifar):
    root, train, test = cifar
    assert (len(train), len(test)) == (50_000, 10_000)
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes == (root / "label_names.txt").read_text().split()
    for i in range(5):  # every training file, in order, byte for byte
        record = _records(train, 10_000 * i, 10_000 * (i + 1))
        assert hashlib.md5(record).hexdigest() == CIFAR_RECORD_MD5[f"train_{i + 1}"]
    assert hashlib.md5(_records(test, 0, 10_000)).hexdigest() == CIFAR_RECORD_MD5["test"]


def test_cifar10_statistics_and_channel_order(cifar):
    _, train, test = cifar
    mean, std = channel_stats(train.images)
    assert np.allclose(mean, TRAIN_STATS["cifar10"][0], atol=5e-5)
    assert np.allclose(std, TRAIN_STATS["cifar10"][1], atol=5e-5)
    assert test.mean == TRAIN_STATS["cifar10"][0]
    # Red is brightest and blue darkest on average in CIFAR-10: a swapped plane order would break this.
    assert mean[0] > mean[1] > mean[2]


def _fake_cifar(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _write_records(path, images, labels, opener=open):
    rec = np.concatenate([labels[:, None], images.reshape(len(images), -1)], 1)
    with opener(path, "wb") as f:
        f.write(rec.tobytes())


@pytest.mark.parametrize("suffix,opener", [("", open), (".gz", gzip.open), (".xz", lzma.open)])
def test_cifar10_official_binary_version_plain_gzip_xz(tmp_path, suffix, opener):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    parts = [_fake_cifar(4, seed) for seed in range(6)]
    for i, (x, y) in enumerate(parts[:5]):
        _write_records(d / f"data_batch_{i + 1}.bin{suffix}", x, y, opener)
    _write_records(d / f"test_batch.bin{suffix}", *parts[5], opener)
    (d / "batches.meta.txt").write_text("\n".join("abcdefghij") + "\n\n")
    train, test = load_dataset("cifar10", root=tmp_path), load_dataset("cifar10", root=tmp_path, split="test")
    assert torch.equal(train.images, torch.from_numpy(np.concatenate([p[0] for p in parts[:5]])))
    assert train.labels.tolist() == np.concatenate([p[1] for p in parts[:5]]).tolist()
    assert torch.equal(test.images, torch.from_numpy(parts[5][0])) and train.classes == list("abcdefghij")


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_and_cifar100_official_pickles(tmp_path):
    d10 = tmp_path / "c10" / "cifar-10-batches-py"
    d10.mkdir(parents=True)
    parts = [_fake_cifar(3, seed) for seed in range(6)]
    for i, (x, y) in enumerate(parts):
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        _write_pickle(d10 / name, {b"data": x.reshape(3, -1), b"labels": y.tolist(), b"batch_label": b"x"})
    _write_pickle(d10 / "batches.meta", {b"label_names": [f"c{k}" for k in range(10)]})
    train = load_dataset("cifar10", root=tmp_path / "c10")
    assert train.images.shape == (15, 3, 32, 32) and train.classes[3] == "c3"
    assert torch.equal(train.images[3:6], torch.from_numpy(parts[1][0]))
    assert torch.equal(load_dataset("cifar10", root=tmp_path / "c10", split="test").images,
                       torch.from_numpy(parts[5][0]))

    d100 = tmp_path / "c100" / "cifar-100-python"
    d100.mkdir(parents=True)
    x, _ = _fake_cifar(7)
    fine = np.arange(7) * 13 % 100
    _write_pickle(d100 / "train", {"data": x.reshape(7, -1), "fine_labels": fine.tolist(), "coarse_labels": [0] * 7})
    _write_pickle(d100 / "meta", {"fine_label_names": [f"f{k}" for k in range(100)]})
    ds = load_dataset("cifar100", root=tmp_path / "c100")
    assert ds.labels.tolist() == fine.tolist() and len(ds.classes) == 100 and ds.classes[99] == "f99"
    assert torch.equal(ds.images, torch.from_numpy(x)) and len(ds.mean) == 3


def test_pickles_that_would_run_code_are_refused(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    _write_pickle(d / "train", {"data": __import__("os").system})  # references a callable: must not load
    with pytest.raises(DataError, match="train is not a readable CIFAR pickle"):
        load_dataset("cifar100", root=tmp_path)


def test_truncated_cifar_file_names_the_file(tmp_path):
    x, y = _fake_cifar(5)
    _write_records(tmp_path / "train_1.bin.xz", x, y, lzma.open)
    for i in range(2, 6):
        _write_records(tmp_path / f"train_{i}.bin", x, y)
    (tmp_path / "train_3.bin").write_bytes((tmp_path / "train_3.bin").read_bytes()[:-7])
    with pytest.raises(DataError, match="train_3.bin is truncated or corrupt"):
        load_dataset("cifar10", root=tmp_path)
    data = (tmp_path / "train_1.bin.xz").read_bytes()
    (tmp_path / "train_1.bin.xz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="train_1.bin.xz is truncated or corrupt"):
        load_dataset("cifar10", root=tmp_path)


# ------------------------------------------------------------------------------------------------- MNIST

def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_files_and_truncation(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (9, 28, 28)), rng.integers(0, 10, 9)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 2051)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 2049)
    ds = load_dataset("mnist", root=tmp_path, split="test")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert ds.labels.tolist() == labels.tolist() and ds.mean == TRAIN_STATS["mnist"][0]
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:  # header says 9 images, 8.5 follow
        f.write((2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (9, 28, 28))
                + bytes(784 * 8 + 392))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is truncated or corrupt"):
        load_dataset("mnist", root=tmp_path, split="test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x03" + bytes(20)))
    with pytest.raises(DataError, match="not a uint8 IDX file"):
        load_dataset("mnist", root=tmp_path, split="test")


# -------------------------------------------------------------------------------------- digits, synthetic

def test_digits_scaling_rule_and_fixed_stratified_split():
    from sklearn.datasets import load_digits
    bunch = load_digits()
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1437, 360) and train.images.shape[1:] == (1, 8, 8)
    counts = np.bincount(bunch.target)
    assert np.all(np.abs(torch.bincount(test.labels).numpy() - counts * 0.2) <= 1)  # stratified
    # Every image is the scaled original: round(v * 255 / 16), 16 -> 255, 8 -> 128.
    scaled = np.floor(bunch.images * 255 / 16 + 0.5).astype(np.uint8)
    together = torch.cat([train.images, test.images])[:, 0].numpy()
    assert sorted(map(bytes, together)) == sorted(map(bytes, scaled))
    assert train.images.max() == 255 and (train.images == 128).any()
    again = load_dataset("digits", split="test")
    assert torch.equal(again.images, test.images) and test.mean == train.mean


def test_synthetic_image_dataset_seed_001():
    ds = SyntheticImageDataset(num_samples=10, img_size=32, patch_size=8, in_channels=3)
    image, label = ds[4]
    assert len(ds) == 10 and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.shape == () and label.dtype == torch.int64 and 0 <= int(label) < 10
    assert torch.equal(ds[4][0], image) and not torch.equal(ds[5][0], image) and ds.num_patches == 16
    assert 0 <= float(image.min()) and float(image.max()) < 1
    assert len({int(ds[i][1]) for i in range(10)}) > 1
    with pytest.raises(ConfigError, match="patch_size 5 must divide img_size 32"):
        SyntheticImageDataset(4, 32, 5)


def test_learnable_synthetic_set_is_balanced_and_separable():
    train, test = make_synthetic("train", num_train=500, num_test=200), make_synthetic("test", 500, 200)
    assert torch.bincount(train.labels).tolist() == [50] * 10 and test.mean == train.mean
    # A nearest-class-mean classifier (no learning beyond averaging) must do far better than chance (10%).
    x = train.images.float().flatten(1)
    centroids = torch.stack([x[train.labels == k].mean(0) for k in range(10)])
    pred = torch.cdist(test.images.float().flatten(1), centroids).argmin(1)
    assert (pred == test.labels).float().mean() > 0.9
    assert load_dataset("synthetic").images.shape == (5000, 3, 32, 32)


# ------------------------------------------------------------------------------------------------ errors

def test_missing_folder_names_folder_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path))
    assert default_root("cifar10") == tmp_path / "cifar-10"
    with pytest.raises(DataError, match=r"cifar-10 is missing or empty; set VITKIT_DATA .* --set data.download=true \(vitkit train\) or download=True"):
        load_dataset("cifar10")
    monkeypatch.delenv("VITKIT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root("fashion-mnist") == tmp_path / "home" / ".cache" / "vitkit" / "fashion-mnist"
    with pytest.raises(DataError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="split must be one of train, test"):
        load_dataset("digits", split="val")


def test_image_dataset_validates_its_tensors():
    with pytest.raises(DataError, match="must be a uint8 tensor"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2), ["a"])
    with pytest.raises(DataError, match=r"must lie in 0..1"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"])
    ds = ImageDataset(torch.full((2, 1, 4, 4), 51, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    assert ds.mean == pytest.approx((0.2,)) and ds.std == pytest.approx((0.0,), abs=1e-6)

"""Tests of the datasets package: splits, decoding, verification, downloads, own CSV data,
augmentation and normalisation. Small archives and images are generated in tmp_path."""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import struct
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from datasets import (
    DataBundle,
    DatasetError,
    Split,
    augment,
    cifar10,
    files,
    load_dataset,
    loader,
    mnist,
    stl10,
    to_network_input,
)
from datasets.imageops import apply_augmentation, augment_params, resize_images, resize_matrix, working_size
from tests.helpers import MNIST_DIR

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reads the user's data folders or cache, and none reaches the network."""
    monkeypatch.delenv(files.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert isinstance(err.value, UserError)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------- digits and splitting

def test_digits_sizes_types_and_disjoint_splits():
    bundle = load_dataset("digits", 0)
    assert isinstance(bundle, DataBundle)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1197, 300, 300)
    assert bundle.image_shape == (1, 32, 32) and bundle.num_classes == 10
    assert bundle.mean == (0.5,) and bundle.std == (0.5,)
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (1, 32, 32)
        assert split.labels.dtype == np.int64 and split.labels.min() >= 0 and split.labels.max() <= 9
        assert split.ids.dtype.kind == "U" and split.ids.shape == (len(split),)
    ids = [set(s.ids) for s in (bundle.train, bundle.val, bundle.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == {f"digits/{i}" for i in range(1797)}


def test_digits_pixels_scaled_and_resized():
    from sklearn.datasets import load_digits
    raw = load_digits()
    bundle = load_dataset("digits", 0)
    row = 7
    index = int(bundle.test.ids[row].split("/")[1])
    expected = resize_images(np.rint(raw.images[index] * 255 / 16).astype(np.uint8)[None, None], (32, 32))[0]
    np.testing.assert_array_equal(bundle.test.images[row], expected)
    assert bundle.test.labels[row] == raw.target[index]
    assert bundle.train.images.max() == 255


def test_digits_test_set_fixed_and_split_seeded():
    a, a2, b = load_dataset("digits", 0), load_dataset("digits", 0), load_dataset("digits", 1)
    np.testing.assert_array_equal(a.test.ids, b.test.ids)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    np.testing.assert_array_equal(a.train.ids, a2.train.ids)
    np.testing.assert_array_equal(a.val.ids, a2.val.ids)
    np.testing.assert_array_equal(a.train.images, a2.train.images)
    assert set(a.val.ids) != set(b.val.ids)
    assert set(a.train.ids) | set(a.val.ids) == set(b.train.ids) | set(b.val.ids)


def test_split_rule_is_documented_permutation():
    ids = np.array([str(i) for i in range(10)])
    pool = Split(np.zeros((10, 1, 2, 2), np.uint8), np.arange(10, dtype=np.int64), ids)
    train, val = loader.seeded_split(pool, 3, 7)
    perm = np.random.RandomState(7).permutation(10)
    np.testing.assert_array_equal(val.labels, perm[:3])
    np.testing.assert_array_equal(train.labels, perm[3:])


def test_truncation_keeps_first_n():
    full = load_dataset("digits", 3)
    cut = load_dataset("digits", 3, n_train=100, n_val=20, n_test=30)
    assert (len(cut.train), len(cut.val), len(cut.test)) == (100, 20, 30)
    np.testing.assert_array_equal(cut.train.ids, full.train.ids[:100])
    np.testing.assert_array_equal(cut.val.ids, full.val.ids[:20])
    np.testing.assert_array_equal(cut.test.images, full.test.images[:30])
    big = load_dataset("digits", 3, n_train=10 ** 6)
    assert len(big.train) == 1197


@pytest.mark.parametrize("kwargs, text", [
    ({"n_train": 0}, "n_train"), ({"n_val": -5}, "n_val"), ({"n_test": 1.5}, "n_test"),
    ({"seed": -1}, "seed"), ({"name": "imagenet"}, "unknown dataset"),
    ({"val_csv": "v.csv"}, "only to own CSV"),
])
def test_bad_arguments(kwargs, text):
    args = {"name": "digits", "seed": 0}
    args.update(kwargs)
    with pytest.raises(DatasetError) as err:
        load_dataset(**args)
    assert text in assert_one_line(err)


def test_split_subset_and_len():
    bundle = load_dataset("digits", 0)
    sub = bundle.train.subset(np.array([5, 2]))
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.ids, bundle.train.ids[[5, 2]])
    np.testing.assert_array_equal(sub.images[1], bundle.train.images[2])
    mask = np.zeros(len(bundle.train), bool)
    mask[[1, 3]] = True
    np.testing.assert_array_equal(bundle.train.subset(mask).ids, bundle.train.ids[[1, 3]])
    assert len(bundle.train.subset(np.array([], np.int64))) == 0


# ---------------------------------------------------------------- image operations

def test_working_size_rule():
    assert working_size(8, 8) == (32, 32)
    assert working_size(28, 28) == (32, 32)
    assert working_size(20, 200) == (32, 32)
    assert working_size(32, 32) == (32, 32)
    assert working_size(96, 96) == (96, 96)
    assert working_size(40, 60) == (40, 60)
    assert working_size(128, 500) == (128, 500)
    assert working_size(200, 300) == (128, 128)


def test_resize_matches_pil_bilinear():
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((8, 8), (32, 32)), ((28, 28), (32, 32)), ((200, 300), (128, 128))]:
        images = rng.integers(0, 256, (3, 1, h, w), dtype=np.uint8)
        ours = resize_images(images, (oh, ow))
        pil = np.stack([np.asarray(Image.fromarray(im[0]).resize((ow, oh), Image.BILINEAR)) for im in images])
        assert ours.dtype == np.uint8 and ours.shape == (3, 1, oh, ow)
        assert np.abs(ours[:, 0].astype(int) - pil).max() <= 1
    np.testing.assert_allclose(resize_matrix(28, 32).sum(axis=1), 1.0)
    constant = np.full((2, 3, 10, 10), 77, np.uint8)
    assert (resize_images(constant, (32, 32)) == 77).all()


def test_augment_deterministic_and_batch_independent():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    seeds = np.array([11, 12, 13, 14, 15, 16])
    out = augment(images, seeds)
    assert out.dtype == np.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out, augment(images, seeds))
    np.testing.assert_array_equal(out[2:3], augment(images[2:3], seeds[2:3]))
    many = augment(np.repeat(images[:1], 20, axis=0), np.arange(20))
    assert len({m.tobytes() for m in many}) >= 10


def test_augment_params_follow_documented_draws():
    dy, dx, flip = augment_params(np.array([5, 99]))
    for i, seed in enumerate([5, 99]):
        rng = np.random.default_rng(seed)
        oy, ox = rng.integers(0, 9, size=2)
        assert (dy[i], dx[i], flip[i]) == (oy, ox, rng.random() < 0.5)
    assert ((dy >= 0) & (dy <= 8)).all()


def test_crop_and_flip_geometry():
    images = np.arange(2 * 1 * 6 * 6, dtype=np.uint8).reshape(2, 1, 6, 6) + 1
    same = apply_augmentation(images, np.array([4, 4]), np.array([4, 4]), np.array([False, False]))
    np.testing.assert_array_equal(same, images)
    mirrored = apply_augmentation(images, np.array([4, 4]), np.array([4, 4]), np.array([True, False]))
    np.testing.assert_array_equal(mirrored[0], images[0, :, :, ::-1])
    np.testing.assert_array_equal(mirrored[1], images[1])
    shifted = apply_augmentation(images, np.array([0, 8]), np.array([0, 6]), np.array([False, False]))
    np.testing.assert_array_equal(shifted[0, :, 4:, 4:], images[0, :, :2, :2])
    assert (shifted[0, :, :4, :] == 0).all() and (shifted[0, :, :, :4] == 0).all()
    np.testing.assert_array_equal(shifted[1, :, :2, :4], images[1, :, 4:, 2:])
    assert (shifted[1, :, 2:, :] == 0).all()
    seed = next(s for s in range(5000) if tuple(np.array(augment_params([s])).ravel()) == (4, 4, 0))
    np.testing.assert_array_equal(augment(images[:1], np.array([seed])), images[:1])


def test_to_network_input_values():
    grey = np.array([0, 255, 128, 51], np.uint8).reshape(1, 1, 2, 2)
    out = to_network_input(grey, (0.5,), (0.5,))
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2)
    expected = [-1.0, 1.0, (128 / 255 - 0.5) / 0.5, (0.2 - 0.5) / 0.5]
    np.testing.assert_allclose(out.ravel(), expected, rtol=0, atol=1e-6)
    colour = np.full((2, 3, 1, 1), 255, np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    out = to_network_input(colour, mean, std)
    np.testing.assert_allclose(out[1, :, 0, 0], [(1 - m) / s for m, s in zip(mean, std)], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- MNIST

def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> dict:
    """Small valid MNIST files; returns {name: decompressed bytes}."""
    rng = np.random.default_rng(0)
    content = {
        mnist.TRAIN_IMAGES: idx_bytes(rng.integers(0, 256, (n_train, 28, 28))),
        mnist.TRAIN_LABELS: idx_bytes(np.arange(n_train) % 10),
        mnist.TEST_IMAGES: idx_bytes(rng.integers(0, 256, (n_test, 28, 28))),
        mnist.TEST_LABELS: idx_bytes(np.arange(n_test) % 10),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in content.items():
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return content


@pytest.fixture
def real_mnist() -> Path:
    if not all((MNIST_DIR / (f + ".gz")).is_file() for f in mnist.FILES):
        pytest.skip(f"real MNIST not at {MNIST_DIR}")
    return MNIST_DIR


def test_real_mnist(real_mnist):
    start = time.time()
    bundle = load_dataset("mnist", 0, data_dir=str(real_mnist))
    assert time.time() - start < 20
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (50000, 10000, 10000)
    assert bundle.image_shape == (1, 32, 32) and bundle.num_classes == 10
    assert bundle.train.images.dtype == np.uint8
    all_labels = np.concatenate([bundle.train.labels, bundle.val.labels])
    assert all_labels.min() == 0 and all_labels.max() == 9
    assert np.bincount(all_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(bundle.test.labels).tolist() == MNIST_TEST_COUNTS
    assert bundle.test.ids[0] == "mnist/test/0" and bundle.test.labels[0] == 7
    first = np.flatnonzero(np.concatenate([bundle.train.ids, bundle.val.ids]) == "mnist/train/0")
    assert all_labels[first[0]] == 5
    raw = mnist.read_raw(real_mnist / "t10k-labels-idx1-ubyte.gz")
    assert hashlib.md5(raw).hexdigest() == "27ae3e4e09519cfbb04c329615203637"
    start = time.time()
    other = load_dataset("mnist", 1, data_dir=str(real_mnist))
    assert time.time() - start < 1.0  # decoded arrays are memoised
    assert set(other.val.ids) != set(bundle.val.ids)
    np.testing.assert_array_equal(other.test.images, bundle.test.images)


def test_mnist_truncated_gz(real_mnist, tmp_path):
    for name in mnist.FILES[1:]:
        os.symlink(real_mnist / (name + ".gz"), tmp_path / (name + ".gz"))
    data = (real_mnist / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(data[:len(data) // 3])
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", 0, data_dir=str(tmp_path))
    message = assert_one_line(err)
    assert "train-images-idx3-ubyte.gz" in message and "cannot read" in message


def test_mnist_wrong_md5(tmp_path):
    write_mnist(tmp_path, gz=True)
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", 0, data_dir=str(tmp_path))
    message = assert_one_line(err)
    actual = hashlib.md5(gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())).hexdigest()
    assert "train-images-idx3-ubyte.gz" in message
    assert "47040016 B, md5 6bbc9ace898e44ae57da46a324031adb" in message
    assert f"{4 + 12 + 12 * 784} B, md5 {actual}" in message and "delete it" in message


def test_mnist_small_uncompressed_from_env_subfolder(tmp_path, monkeypatch):
    content = write_mnist(tmp_path / "mnist", n_train=12, n_test=5)
    monkeypatch.setattr(mnist, "CHECKS", {})
    monkeypatch.setenv(files.DATA_DIR_ENV, str(tmp_path))
    bundle = load_dataset("mnist", 0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 2, 5)
    assert bundle.image_shape == (1, 32, 32)
    raw = np.frombuffer(content[mnist.TEST_IMAGES][16:], np.uint8).reshape(5, 1, 28, 28)
    np.testing.assert_array_equal(bundle.test.images, resize_images(raw, (32, 32)))
    np.testing.assert_array_equal(bundle.test.labels, np.arange(5))


@pytest.mark.parametrize("mutate, text", [
    (lambda b: b[:-1], "truncated or corrupt"),
    (lambda b: b + b"\0", "truncated or corrupt"),
    (lambda b: b"\0\0\x08\x01" + b[4:], "magic 0x00000801"),
    (lambda b: b[:6], "header truncated"),
])
def test_idx_parser_rejects_malformed(tmp_path, mutate, text):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(np.zeros((2, 28, 28)))))
    with pytest.raises(DatasetError) as err:
        mnist.read_idx_file(path, 3)
    message = assert_one_line(err)
    assert text in message and str(path) in message


def test_offline_missing_file_names_file_url_and_folder(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", 0)
    message = assert_one_line(err)
    assert "train-images-idx3-ubyte.gz" in message
    assert "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz" in message
    assert str((tmp_path / "cache" / "mnist").resolve()) in message and "--data-dir" in message
    assert not any((tmp_path / "cache").rglob("*.gz"))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", 0)
    message = assert_one_line(err)
    assert "cifar-10-python.tar.gz" in message and cifar10.URL in message
    assert str((tmp_path / "cache" / "cifar10").resolve()) in message


def test_given_data_dir_is_never_downloaded_into(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: calls.append(a))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as err:
        load_dataset("stl10", 0, data_dir=str(empty))
    message = assert_one_line(err)
    assert "stl10_binary.tar.gz" in message and stl10.URL in message and str(empty.resolve()) in message
    assert calls == []


def test_download_verified_cached_and_not_refetched(tmp_path, monkeypatch):
    content = write_mnist(tmp_path / "source", n_train=6, n_test=3)
    served = {base + name + ".gz": gzip.compress(data) for name, data in content.items() for base in mnist.URLS}
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        if url.startswith(mnist.URLS[0]):  # e.g. a block page instead of the file
            return io.BytesIO(b"<html>access denied</html>")
        return io.BytesIO(served[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    checks = {n: files.FileCheck(len(d), hashlib.md5(d).hexdigest()) for n, d in content.items()}
    monkeypatch.setattr(mnist, "CHECKS", checks)
    bundle = load_dataset("mnist", 0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (5, 1, 3)
    assert len(calls) == 8  # primary served junk, mirror the file, for each of the four files
    cached = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(n + ".gz" for n in mnist.FILES)
    loader.clear_cache()
    load_dataset("mnist", 1)
    assert len(calls) == 8


def test_bad_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not a tarball"))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", 0)
    message = assert_one_line(err)
    assert "170498071 B, md5 c58f30108f718f92721af3b95e74349a" in message
    assert f"got 13 B, md5 {hashlib.md5(b'not a tarball').hexdigest()}" in message
    assert cifar10.URL in message and "nothing was kept" in message
    assert list((tmp_path / "cache" / "cifar10").iterdir()) == []


def test_verification_memoised(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    check = files.FileCheck(3, hashlib.md5(b"abc").hexdigest())
    files.verify_file(path, check)
    assert files._memo_key(path, check) in files._VERIFIED
    with pytest.raises(DatasetError) as err:
        files.verify_file(path, files.FileCheck(4, check.md5))
    assert "expected 4 B" in assert_one_line(err)


# ---------------------------------------------------------------- CIFAR-10

def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str opcodes, as in the real CIFAR-10 batches (made by Python 2)."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def dumps(obj, protocol) -> bytes:
    if protocol != "py2":
        return pickle.dumps(obj, protocol=protocol)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_cifar(path: Path, per_batch: int = 4, evil: bytes = b"", protocol=2) -> dict:
    rng = np.random.default_rng(2)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in cifar10.TRAIN_BATCHES + (cifar10.TEST_BATCH,):
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = [int(x) for x in rng.integers(0, 10, per_batch)]
            batches[name] = (data, labels)
            blob = evil if (evil and name == "data_batch_1") else dumps(
                {"batch_label": name, "data": data, "labels": labels, "filenames": ["x.png"] * per_batch}, protocol)
            add_member(tar, f"cifar-10-batches-py/{name}", blob)
        add_member(tar, "cifar-10-batches-py/readme.html", b"<html/>")
    return batches


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_cifar10_parser(tmp_path, protocol):
    batches = write_cifar(tmp_path / "c.tar.gz", protocol=protocol)
    pool, test = cifar10.parse_cifar10_archive(tmp_path / "c.tar.gz")
    assert pool.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    data, labels = batches["data_batch_2"]
    np.testing.assert_array_equal(pool.images[5, 0].ravel(), data[1, :1024])    # red plane first
    np.testing.assert_array_equal(pool.images[5, 2].ravel(), data[1, 2048:])
    assert pool.labels[5] == labels[1] and pool.ids[5] == "cifar10/data_batch_2/1"
    np.testing.assert_array_equal(test.labels, batches["test_batch"][1])
    assert test.ids[3] == "cifar10/test_batch/3"


def test_cifar10_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    write_cifar(tmp_path / "c.tar.gz", evil=pickle.dumps(Evil()))
    with pytest.raises(DatasetError) as err:
        cifar10.parse_cifar10_archive(tmp_path / "c.tar.gz")
    message = assert_one_line(err)
    assert "refusing to unpickle" in message and "system" in message and "data_batch_1" in message
    assert not marker.exists()
    assert cifar10.safe_load(pickle.dumps({"data": [1]}), "x") == {"data": [1]}  # no globals needed
    with pytest.raises(DatasetError) as err:
        cifar10.safe_load(pickle.dumps(shutil.rmtree), "x")
    assert "refusing to unpickle shutil.rmtree" in assert_one_line(err)


def test_cifar10_load_dataset_and_checks(tmp_path, monkeypatch):
    write_cifar(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", 0, data_dir=str(tmp_path))
    message = assert_one_line(err)
    assert "cifar-10-python.tar.gz" in message and "c58f30108f718f92721af3b95e74349a" in message
    monkeypatch.setattr(cifar10, "CHECK", None)
    bundle = load_dataset("cifar10", 0, data_dir=str(tmp_path))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (16, 4, 4)
    assert bundle.image_shape == (3, 32, 32)
    assert bundle.mean == (0.4914, 0.4822, 0.4465) and bundle.std == (0.2023, 0.1994, 0.2010)


def test_cifar10_broken_archives(tmp_path):
    write_cifar(tmp_path / "c.tar.gz")
    data = (tmp_path / "c.tar.gz").read_bytes()
    (tmp_path / "t.tar.gz").write_bytes(data[:len(data) // 2])
    with pytest.raises(DatasetError) as err:
        cifar10.parse_cifar10_archive(tmp_path / "t.tar.gz")
    assert "t.tar.gz" in assert_one_line(err)
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tar:
        add_member(tar, "cifar-10-batches-py/data_batch_1", b"x")
    with pytest.raises(DatasetError) as err:
        cifar10.parse_cifar10_archive(tmp_path / "m.tar.gz")
    assert "archive lacks" in assert_one_line(err) and "test_batch" in str(err.value)


# ---------------------------------------------------------------- STL-10

def write_stl10(path: Path, n_train: int = 5, n_test: int = 3, bad_label: bool = False) -> dict:
    rng = np.random.default_rng(3)
    parts = {}
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "stl10_binary/class_names.txt", b"airplane\n")
        for part, n in (("train", n_train), ("test", n_test)):
            images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
            labels = (np.arange(n) % 10 + 1).astype(np.uint8)
            if bad_label:
                labels[0] = 0
            parts[part] = (images, labels)
            add_member(tar, f"stl10_binary/{part}_X.bin", images.transpose(0, 1, 3, 2).tobytes())  # column-major
            add_member(tar, f"stl10_binary/{part}_y.bin", labels.tobytes())
    return parts


def test_stl10_parser(tmp_path):
    parts = write_stl10(tmp_path / "s.tar.gz")
    pool, test = stl10.parse_stl10_archive(tmp_path / "s.tar.gz")
    np.testing.assert_array_equal(pool.images, parts["train"][0])
    np.testing.assert_array_equal(test.images, parts["test"][0])
    np.testing.assert_array_equal(pool.labels, parts["train"][1].astype(np.int64) - 1)
    assert pool.ids[4] == "stl10/train/4" and test.ids[0] == "stl10/test/0"
    write_stl10(tmp_path / "b.tar.gz", bad_label=True)
    with pytest.raises(DatasetError) as err:
        stl10.parse_stl10_archive(tmp_path / "b.tar.gz")
    assert "labels outside 1..10" in assert_one_line(err)


def test_stl10_load_dataset(tmp_path, monkeypatch):
    write_stl10(tmp_path / "stl10_binary.tar.gz", n_train=10, n_test=4)
    monkeypatch.setattr(stl10, "CHECK", None)
    bundle = load_dataset("stl10", 2, data_dir=str(tmp_path))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 2, 4)
    assert bundle.image_shape == (3, 96, 96) and bundle.num_classes == 10


# ---------------------------------------------------------------- own NNC CSV data

def write_png(path: Path, value: int, size=(8, 8), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


def write_csv(path: Path, rows, header="x:image,y:label") -> Path:
    path.write_text("\n".join([header] + [f"{x},{y}" for x, y in rows]) + "\n")
    return path


@pytest.fixture
def own_data(tmp_path) -> Path:
    """10 training rows (3 classes), 3 validation rows, 4 test rows (one with label 3)."""
    for i in range(17):
        write_png(tmp_path / "img" / f"{i}.png", 10 * i, size=(8, 8) if i != 4 else (16, 12))
    write_csv(tmp_path / "validation.csv", [(f"img/{i}.png", i % 3) for i in range(10, 13)])
    write_csv(tmp_path / "test.csv", [(f"img/{i}.png", 3 if i == 16 else i % 3) for i in range(13, 17)])
    return write_csv(tmp_path / "train.csv", [(f"img/{i}.png", i % 3) for i in range(10)])


def test_own_csv_loads_in_row_order(own_data):
    bundle = load_dataset(str(own_data), 0)
    assert bundle.name == str(own_data)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (10, 3, 4)
    assert bundle.num_classes == 4 and bundle.image_shape == (1, 32, 32) and bundle.mean == (0.5,)
    assert bundle.train.ids.tolist() == [f"img/{i}.png" for i in range(10)]
    assert bundle.train.labels.tolist() == [i % 3 for i in range(10)]
    assert bundle.test.ids[3] == "img/16.png"
    for i in range(10):  # constant images stay constant through resizing (row 4 was 16x12)
        assert (bundle.train.images[i] == 10 * i).all()
    assert (bundle.val.images[0] == 100).all()


def test_own_csv_without_validation_is_split_80_20(tmp_path, caplog):
    for i in range(10):
        write_png(tmp_path / f"{i}.png", i, mode="RGB", size=(40, 40))
    train = write_csv(tmp_path / "my_train.csv", [(f"{i}.png", i % 2) for i in range(10)])
    write_csv(tmp_path / "my_test.csv", [("0.png", 0), ("1.png", 1)])
    caplog.set_level(logging.INFO, logger="datasets.loader")
    a = load_dataset(str(train), 0)
    assert (len(a.train), len(a.val), len(a.test)) == (8, 2, 2)
    assert "80/20" in caplog.text
    assert a.image_shape == (3, 40, 40) and a.mean == (0.4914, 0.4822, 0.4465)
    perm = np.random.RandomState(0).permutation(10)
    assert a.val.ids.tolist() == [f"{i}.png" for i in perm[:2]]
    assert set(a.val.ids) != set(load_dataset(str(train), 5).val.ids)


def test_own_csv_val_name_and_explicit_paths(tmp_path):
    for i in range(6):
        write_png(tmp_path / f"{i}.png", i)
    train = write_csv(tmp_path / "train.csv", [(f"{i}.png", i % 2) for i in range(4)])
    write_csv(tmp_path / "val.csv", [("4.png", 0)])
    write_csv(tmp_path / "test.csv", [("5.png", 1)])
    other = write_csv(tmp_path / "other_test.csv", [("0.png", 1), ("1.png", 0)])
    bundle = load_dataset(str(train), 0)
    assert bundle.val.ids.tolist() == ["4.png"] and bundle.test.ids.tolist() == ["5.png"]
    bundle = load_dataset(str(train), 0, val_csv=str(other), test_csv=str(other))
    assert len(bundle.val) == 2 and bundle.test.labels.tolist() == [1, 0]


def test_own_csv_rgb_and_grey_mixed(tmp_path):
    write_png(tmp_path / "a.png", 200, mode="RGB")
    write_png(tmp_path / "b.png", 50)
    train = write_csv(tmp_path / "train.csv", [("a.png", 0), ("b.png", 1)])
    write_csv(tmp_path / "test.csv", [("b.png", 1)])
    bundle = load_dataset(str(train), 0, val_csv=str(tmp_path / "test.csv"))
    assert bundle.train.images.shape == (2, 3, 32, 32)
    assert (bundle.train.images[1] == 50).all()


@pytest.mark.parametrize("case, text", [
    ("missing_image", "line 3: image file 'img/nope.png' not found"),
    ("header", "line 1: header 'path,class' is not 'x:image,y:label'"),
    ("non_integer", "line 2: label 'cat' is not an integer"),
    ("negative", "line 3: label -2 is negative"),
    ("one_class", "the training split has 10 samples, all of label 1; a classifier needs at least two classes; "
                  "add training rows of another class"),
    ("empty", "the file is empty"),
    ("header_only", "no data rows after the header"),
    ("unreadable", "line 2: cannot read image 'img/0.png'"),
    ("no_test", "no test CSV for"),
    ("missing_csv", "not found"),
])
def test_own_csv_errors(own_data, case, text):
    train = own_data
    rows = [(f"img/{i}.png", i % 3) for i in range(10)]
    if case == "missing_image":
        rows[1] = ("img/nope.png", 1)
    elif case == "non_integer":
        rows[0] = ("img/0.png", "cat")
    elif case == "negative":
        rows[1] = ("img/1.png", -2)
    elif case == "one_class":
        rows = [(x, 1) for x, _ in rows]
    elif case == "unreadable":
        (own_data.parent / "img" / "0.png").write_bytes(b"this is not a png")
    elif case == "no_test":
        (own_data.parent / "test.csv").unlink()
    elif case == "missing_csv":
        train = own_data.parent / "nothing_train.csv"
    if case == "empty":
        own_data.write_text("")
    elif case != "missing_csv":
        header = "path,class" if case == "header" else "x:image,y:label"
        write_csv(own_data, [] if case == "header_only" else rows, header)
    with pytest.raises(DatasetError) as err:
        load_dataset(str(train), 0)
    message = assert_one_line(err)
    assert text in message
    assert str(train.name) in message

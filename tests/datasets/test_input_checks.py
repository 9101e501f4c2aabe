"""Hostile inputs of issue 38, called as a user calls the code: the driver in a subprocess (exit
status 2 and one line ``error: ...`` on stderr, nothing written), the Python API ``Cleanser``, and
``load_dataset`` where the decoded pixels are what is checked.

4: image modes other than 8-bit L/RGB (16-bit grey keeps its high byte, 32-bit integer and
   fractional float images are refused, alpha is dropped deterministically and quietly);
14: registered arrays whose labels are negative or not below ``num_classes``;
17: a training split of fewer than two classes, refused in one place for every data source.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import nnabla as nn
import nnabla.parametric_functions as PF
import numpy as np
import pytest
from PIL import Image

from cleansing.api import Cleanser
from common.errors import UserError
from datasets import files, load_dataset
from estimators import REGISTRY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reads the user's data folders or cache."""
    monkeypatch.delenv(files.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))


def driver(*args) -> subprocess.CompletedProcess:
    """eval_sgd_influence.py as a user runs it (one worker, no progress bar, a small model)."""
    return subprocess.run([sys.executable, str(ROOT / "eval_sgd_influence.py"), "--no-progress", "-j", "1",
                           "-m", "logreg", "-e", "1", "-r", "0", "--methods", "Random", "--gallery", "0", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ))


def assert_refused(res: subprocess.CompletedProcess, message: str, out: Path) -> None:
    """Exit status 2, exactly one line ``error: <message>`` on stderr, no output folder."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines() == [f"error: {message}"], res.stderr
    assert not out.exists()


def write_csv(path: Path, rows) -> Path:
    path.write_text("x:image,y:label\n" + "".join(f"{x},{y}\n" for x, y in rows))
    return path


def grey_png(path: Path, value: int, size: int = 32) -> str:
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path.name


def own_data(folder: Path, extra: str, extra_label: int = 1, first: str = "") -> Path:
    """train.csv (``first`` if given, four 8-bit grey PNGs of classes 0 and 1, then ``extra``),
    validation.csv and test.csv of two 8-bit PNGs each; returns the training CSV."""
    rows = [(first, 0)] if first else []
    rows += [(grey_png(folder / f"g{i}.png", 40 * i), i % 2) for i in range(4)]
    write_csv(folder / "validation.csv", [(grey_png(folder / f"v{i}.png", 30 + 90 * i), i) for i in range(2)])
    write_csv(folder / "test.csv", [(grey_png(folder / f"t{i}.png", 60 + 90 * i), i) for i in range(2)])
    return write_csv(folder / "train.csv", rows + [(extra, extra_label)])


# ------------------------------------------------------------------------ 4: image modes

SIXTEEN = np.concatenate([
    np.arange(256) * 257,                       # 8-bit data widened as the PNG specification does
    np.arange(256) * 256,                       # ... and as nnabla's image writer does
    np.arange(512) * 128,                       # everything between
]).reshape(32, 32).astype(np.uint16)


def sixteen_bit_png(path: Path, values: np.ndarray = SIXTEEN) -> str:
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")       # what PIL opens a 16-bit grey PNG as
    return path.name


@pytest.mark.parametrize("first_mode", ["L", "RGB"])
def test_16_bit_grey_png_keeps_the_high_byte(tmp_path, first_mode):
    first = ""
    if first_mode == "RGB":
        Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(tmp_path / "rgb.png")
        first = "rgb.png"
    train = own_data(tmp_path, sixteen_bit_png(tmp_path / "deep.png"), first=first)
    bundle = load_dataset(str(train), 0)
    got = bundle.train.images[-1]
    expected = (SIXTEEN >> 8).astype(np.uint8)
    assert got.shape == ((1, 32, 32) if first_mode == "L" else (3, 32, 32))
    for band in got:
        np.testing.assert_array_equal(band, expected)
    np.testing.assert_array_equal(expected[:8], np.arange(256).reshape(8, 32))   # both widenings undone
    np.testing.assert_array_equal(expected[8:16], np.arange(256).reshape(8, 32))


def test_16_bit_pngs_train_like_their_8_bit_originals(tmp_path):
    """The driver on 16-bit PNGs (8-bit values widened by 257) gives the summary of the 8-bit PNGs."""
    rng = np.random.RandomState(0)
    for depth in (8, 16):
        (tmp_path / f"d{depth}").mkdir()
    for split, n in (("train", 12), ("validation", 4), ("test", 4)):
        rows = []
        for i in range(n):
            values = rng.randint(0, 256, (32, 32))
            Image.fromarray(values.astype(np.uint8)).save(tmp_path / "d8" / f"{split}{i}.png")
            sixteen_bit_png(tmp_path / "d16" / f"{split}{i}.png", (values * 257).astype(np.uint16))
            rows.append((f"{split}{i}.png", i % 2))
        for depth in (8, 16):
            write_csv(tmp_path / f"d{depth}" / f"{split}.csv", rows)
    summaries = []
    for depth in (8, 16):
        out = tmp_path / f"out{depth}"
        res = driver("-ds", str(tmp_path / f"d{depth}" / "train.csv"), "-o", str(out), "-bs", "4")
        assert res.returncode == 0, res.stderr
        summaries.append((out / "summary" / "summary.csv").read_bytes())
    assert summaries[0] == summaries[1]


@pytest.mark.parametrize("case", ["int32", "float_fractions", "float_nan"])
def test_images_beyond_16_bits_or_fractional_are_refused_in_one_line(tmp_path, case):
    if case == "int32":
        Image.fromarray(np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 100).save(tmp_path / "wide.tif")
        name, what = "wide.tif", "has mode I pixels from 0 to 102300, beyond the 16-bit range 0..65535"
    elif case == "float_fractions":
        Image.fromarray(np.linspace(0, 0.75, 32 * 32, dtype=np.float32).reshape(32, 32)).save(tmp_path / "unit.tif")
        name = "unit.tif"
        what = "has floating-point pixels (mode F) with values from 0 to 0.75, not whole numbers 0..255"
    else:
        values = np.full((32, 32), 7, np.float32)
        values[3, 4] = np.nan
        Image.fromarray(values).save(tmp_path / "nan.tif")
        name = "nan.tif"
        what = "has floating-point pixels (mode F) with NaN or infinite values, not whole numbers 0..255"
    with Image.open(tmp_path / name) as img:
        assert img.mode == ("I" if case == "int32" else "F")
    train = own_data(tmp_path, name)
    out = tmp_path / "out"
    assert_refused(driver("-ds", str(train), "-bs", "1", "-o", str(out)),
                   f"{train}, line 6: image {name!r} {what}; save it as an 8-bit or 16-bit PNG", out)


def test_whole_number_float_and_8_bit_images_decode_as_before(tmp_path):
    """F holding whole numbers 0..255 decodes as the same values in L; 8-bit L and RGB as stored."""
    values = np.arange(32 * 32).reshape(32, 32) % 256
    Image.fromarray(values.astype(np.float32)).save(tmp_path / "whole.tif")
    train = own_data(tmp_path, "whole.tif")
    np.testing.assert_array_equal(load_dataset(str(train), 0).train.images[-1, 0], values)
    colour = np.random.RandomState(1).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    bundle = load_dataset(str(own_data(tmp_path, "g0.png", first="colour.png")), 0)
    np.testing.assert_array_equal(bundle.train.images[0], colour.transpose(2, 0, 1))
    np.testing.assert_array_equal(bundle.train.images[1], np.full((3, 32, 32), 0, np.uint8))


def test_alpha_is_dropped_keeping_stored_colours_without_warnings(tmp_path):
    rng = np.random.RandomState(2)
    rgba = rng.randint(0, 256, (32, 32, 4)).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    la = rng.randint(0, 256, (32, 32, 2)).astype(np.uint8)
    Image.fromarray(la).save(tmp_path / "la.png")
    palette = rng.randint(0, 256, 768).astype(np.uint8)
    index = rng.randint(0, 256, (32, 32)).astype(np.uint8)
    indexed = Image.fromarray(index)
    indexed.putpalette(palette.tobytes())
    indexed.save(tmp_path / "p.png", transparency=bytes(rng.randint(0, 256, 256).astype(np.uint8)))
    cmyk = Image.fromarray(rng.randint(0, 256, (32, 32, 4)).astype(np.uint8), "CMYK")
    cmyk.save(tmp_path / "cmyk.tif")
    modes = {}
    for name in ("rgba.png", "la.png", "p.png", "cmyk.tif"):
        with Image.open(tmp_path / name) as img:
            modes[name] = img.mode
    assert modes == {"rgba.png": "RGBA", "la.png": "LA", "p.png": "P", "cmyk.tif": "CMYK"}
    train = own_data(tmp_path, "la.png", first="rgba.png")
    write_csv(tmp_path / "test.csv", [("p.png", 0), ("cmyk.tif", 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # PIL's palette-transparency warning would be a second line
        bundle = load_dataset(str(train), 0)
    np.testing.assert_array_equal(bundle.train.images[0], rgba[..., :3].transpose(2, 0, 1))
    np.testing.assert_array_equal(bundle.train.images[-1], np.repeat(la[None, ..., 0], 3, axis=0))
    np.testing.assert_array_equal(bundle.test.images[0], palette.reshape(256, 3)[index].transpose(2, 0, 1))
    np.testing.assert_array_equal(bundle.test.images[1], np.asarray(cmyk.convert("RGB")).transpose(2, 0, 1))


# ------------------------------------------------------------------------ 14: labels of the API's arrays

def tiny_net(x, train):
    with nn.parameter_scope("fc"):
        return PF.affine(x, 10)


def arrays(n, labels=None, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (n, 1, 8, 8)).astype(np.uint8)
    return images, (np.arange(n) % 10 if labels is None else np.asarray(labels))


@pytest.mark.parametrize("labels, num_classes, message", [
    ({"train": [0, 1, 10, 12, 3, 10]}, 10,
     "labels 10, 12 of the training arrays are not below num_classes 10; relabel those samples 0..9 or give "
     "num_classes=13 (or more)"),
    ({"test": [0, 1, 2, 15]}, 6,
     "label 15 of the test arrays is not below num_classes 6; relabel those samples 0..5 or give num_classes=16 "
     "(or more)"),
    ({"train": [0, 1, 10, 3], "val": [0, 15]}, 10,     # the largest label of any split is the remedy
     "label 10 of the training arrays is not below num_classes 10; relabel those samples 0..9 or give "
     "num_classes=16 (or more)"),
    ({"val": [0, -1, 2, -3]}, 10,
     "labels -3, -1 of the validation arrays are negative; labels must be class indices 0..9: relabel those samples"),
    ({"train": [0, 1, -2, 3]}, None,
     "label -2 of the training arrays is negative; labels must be class indices 0, 1, 2, ...: relabel those samples"),
])
def test_api_labels_outside_the_classes_are_named(tmp_path, labels, num_classes, message):
    data = {"train": arrays(6), "val": arrays(4, seed=1), "test": arrays(4, seed=2)}
    for split, values in labels.items():
        data[split] = arrays(len(values), values, seed=3)
    with pytest.raises(UserError) as err:
        Cleanser(REGISTRY, tiny_net, out=tmp_path / "run", num_classes=num_classes, name="tiny_labels", **data)
    assert str(err.value) == message
    assert not (tmp_path / "run").exists()


def test_api_num_classes_must_be_two_or_more(tmp_path):
    with pytest.raises(UserError) as err:
        Cleanser(REGISTRY, tiny_net, train=arrays(6, [0] * 6), val=arrays(2, [0, 0]), test=arrays(2, [0, 0]),
                 out=tmp_path / "run", num_classes=1, name="tiny_one")
    assert str(err.value) == "num_classes must be an integer of at least 2, or None for the largest label + 1; got 1"


def test_api_labels_below_num_classes_are_accepted(tmp_path):
    c = Cleanser(REGISTRY, tiny_net, train=arrays(6), val=arrays(4, seed=1), test=arrays(4, seed=2),
                 out=tmp_path / "run", num_classes=12, name="tiny_ok")
    data = load_dataset(c.cfg.data.dataset, 0)
    assert data.num_classes == 12 and data.train.labels.tolist() == [0, 1, 2, 3, 4, 5]


# ------------------------------------------------------------------------ 17: fewer than two classes

def test_builtin_training_split_of_one_sample_is_refused(tmp_path):
    out = tmp_path / "out"
    assert_refused(driver("-ds", "digits", "--n-train", "1", "-bs", "1", "-o", str(out)),
                   "dataset digits, trial seed 0: the training split has 1 sample (label 7); a classifier needs at "
                   "least two classes; raise --n-train (now 1) until the training split holds two classes", out)


def test_csv_training_split_cut_to_one_class_is_refused(tmp_path):
    train = own_data(tmp_path, "g0.png", extra_label=0)     # rows of classes 0, 1, 0, 1, 0
    out = tmp_path / "out"
    assert_refused(driver("-ds", str(train), "--n-train", "1", "-bs", "1", "-o", str(out)),
                   f"{train}: the training split has 1 sample (label 0); a classifier needs at least two classes; "
                   "raise --n-train (now 1) until the training split holds two classes", out)


def test_csv_of_one_class_is_refused_by_the_same_check(tmp_path):
    rows = [(grey_png(tmp_path / f"g{i}.png", 40 * i), 1) for i in range(4)]
    train = write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:2])
    out = tmp_path / "out"
    # no validation CSV: the seeded 80/20 split keeps 3 of the 4 rows for training
    assert_refused(driver("-ds", str(train), "-bs", "1", "-o", str(out)),
                   f"{train}: the training split has 3 samples, all of label 1; a classifier needs at least two "
                   "classes; add training rows of another class", out)


def test_api_arrays_of_one_class_are_refused_by_the_same_check(tmp_path):
    c = Cleanser(REGISTRY, tiny_net, train=arrays(6, [3] * 6), val=arrays(4, seed=1), test=arrays(4, seed=2),
                 out=tmp_path / "run", name="tiny_single", epochs=1, batch_size=2, num_classes=10)
    with pytest.raises(UserError) as err:
        c.train()
    assert str(err.value) == ("the training arrays: the training split has 6 samples, all of label 3; a classifier "
                              "needs at least two classes; give training labels of two classes or more")

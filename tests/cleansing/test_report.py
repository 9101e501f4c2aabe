"""Tests of the user-facing outputs: label noise, detection curves, harmful gallery, cleansed
dataset (built-in and own CSV data), and the paper's Table 1 (cache sizes)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cleansing import report
from cleansing.influence_csv import influence_frame, read_influence_csv, write_influence_csv
from common.errors import UserError
from datasets import DataBundle, load_dataset
from datasets.base import index_ids, make_split
from datasets.noise import apply_label_noise, flip_labels


def no_partials(folder: Path) -> bool:
    return not [p for p in Path(folder).rglob("*") if ".partial" in p.name]


def digits_like(n=150, seed=0, channels=1, name="digits") -> DataBundle:
    """A small image bundle (uint8 (N, C, 32, 32), 10 classes) with stable ids."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(3 * n, channels, 32, 32), dtype=np.uint8)
    labels = np.arange(3 * n) % 10
    split = make_split(images, labels, index_ids(name, 3 * n))
    parts = [split.subset(np.arange(k * n, (k + 1) * n)) for k in range(3)]
    return DataBundle(name, parts[0], parts[1], parts[2], 10, (0.5,) * channels, (0.5,) * channels)


def random_frame(data: DataBundle, seed=0, noisy=None) -> pd.DataFrame:
    scores = np.random.default_rng(seed).normal(size=len(data.train))
    return influence_frame(data.train.ids, data.train.labels, scores, noisy)


# ---------------------------------------------------------------- label noise
def test_flip_labels_count_changed_seeded_and_input_untouched():
    labels = np.arange(1000) % 10
    before = labels.copy()
    new, noisy = flip_labels(labels, 0.1, 10, 3)
    assert noisy.dtype == bool and noisy.sum() == 100
    assert np.all(new[noisy] != labels[noisy]) and np.array_equal(new[~noisy], labels[~noisy])
    assert new.min() >= 0 and new.max() <= 9
    assert np.array_equal(labels, before)
    again, noisy2 = flip_labels(labels, 0.1, 10, 3)
    assert np.array_equal(again, new) and np.array_equal(noisy2, noisy)
    other, noisy3 = flip_labels(labels, 0.1, 10, 4)
    assert not np.array_equal(noisy3, noisy)
    # exactly round(fraction * n), also for odd sizes; fraction 0 flips nothing
    assert flip_labels(np.arange(37) % 3, 0.25, 3, 0)[1].sum() == round(0.25 * 37)
    zero, none = flip_labels(labels, 0.0, 10, 0)
    assert not none.any() and np.array_equal(zero, labels)


def test_flip_labels_uniform_over_other_classes():
    labels = np.zeros(20000, dtype=np.int64)            # every sample class 0
    new, noisy = flip_labels(labels, 0.9, 5, 0)
    counts = np.bincount(new[noisy], minlength=5)
    assert counts[0] == 0
    expected = noisy.sum() / 4
    assert np.all(np.abs(counts[1:] - expected) < 0.05 * expected)   # 4,500 each +- 5%


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "abc"])
def test_flip_labels_fraction_validation(bad):
    with pytest.raises(UserError) as err:
        flip_labels(np.arange(10) % 2, bad, 2, 0)
    message = str(err.value)
    assert "\n" not in message and "[0, 1)" in message


def test_apply_label_noise_touches_train_only():
    data = digits_like()
    noisy_data, noisy = apply_label_noise(data, 0.2, seed=1)
    assert noisy.sum() == 30
    assert np.all(noisy_data.train.labels[noisy] != data.train.labels[noisy])
    assert noisy_data.val is data.val and noisy_data.test is data.test
    assert np.array_equal(noisy_data.train.images, data.train.images)
    same, none = apply_label_noise(data, 0.0, seed=1)
    assert same is data and not none.any()


# ---------------------------------------------------------------- detection curves
def test_detection_curves_perfect_and_random_rankings():
    n, flipped = 1000, 100
    rng = np.random.default_rng(0)
    noisy = np.zeros(n, bool)
    noisy[rng.choice(n, flipped, replace=False)] = True
    ids, labels = np.arange(n).astype(str), np.zeros(n, int)
    perfect = influence_frame(ids, labels, np.where(noisy, -1.0, 1.0) + 1e-3 * rng.random(n), noisy)
    frames = {"Ours": perfect, "Random": {s: influence_frame(ids, labels, np.random.default_rng(s).random(n), noisy)
                                          for s in range(5)}}
    curves = report.detection_curves(frames, seed=0)
    assert list(curves.columns) == ["method", "seed", "checked_fraction", "found_fraction"]
    ours = curves[curves.method == "Ours"].set_index("checked_fraction")["found_fraction"]
    assert len(ours) == 101 and ours.loc[0.0] == 0.0 and ours.loc[1.0] == 1.0
    assert ours.loc[0.1] == 1.0 and ours.loc[0.05] == pytest.approx(0.5)
    assert np.all(np.diff(ours.values) >= 0)
    rand = curves[curves.method == "Random"]
    assert sorted(rand.seed.unique()) == [0, 1, 2, 3, 4]
    mean = rand.groupby("checked_fraction")["found_fraction"].mean()
    assert np.max(np.abs(mean.values - mean.index.values)) < 0.1     # close to the diagonal


def test_detection_needs_noisy_column_and_flips():
    data = digits_like(n=50)
    with pytest.raises(UserError, match="noisy"):
        report.detection_curves({"Ours": random_frame(data)})
    with pytest.raises(UserError, match="no flipped"):
        report.detection_curves({"Ours": random_frame(data, noisy=np.zeros(50, bool))})


def test_write_detection_files(tmp_path):
    data = digits_like(n=200)
    _, noisy = flip_labels(data.train.labels, 0.1, 10, 0)
    frames = {m: {s: random_frame(data, seed=s + 10 * k, noisy=noisy) for s in range(2)}
              for k, m in enumerate(["Ours", "Random"])}
    for m, per_seed in frames.items():
        for s, frame in per_seed.items():
            write_influence_csv(tmp_path / "influence" / m / f"influence_{m.lower()}_{s}.csv", frame)
    write_influence_csv(tmp_path / "influence" / "Hara" / "influence_hara_0.csv", random_frame(data))  # no noise
    collected = report.collect_detection_frames(tmp_path, ["Hara", "Ours", "Random"], [0, 1, 2])
    assert sorted(collected) == ["Ours", "Random"] and sorted(collected["Ours"]) == [0, 1]
    curves = report.write_detection(tmp_path, collected, "test", costs={"Ours": {0: 2.5}})
    table = pd.read_csv(tmp_path / "summary" / "detection.csv")
    assert len(table) == len(curves) == 2 * 2 * 101
    at = pd.read_csv(tmp_path / "summary" / "detection_at.csv")
    assert list(at.columns) == ["method", "seed", "found_at_5", "found_at_10", "found_at_20", "cost_epochs"]
    assert list(zip(at.method, at.seed)) == [("Ours", 0), ("Ours", 1), ("Random", 0), ("Random", 1)]
    for _, row in at.iterrows():
        curve = curves[(curves.method == row.method) & (curves.seed == row.seed)].set_index("checked_fraction")
        assert [row.found_at_5, row.found_at_10, row.found_at_20] == list(curve.found_fraction.loc[[0.05, 0.1, 0.2]])
    assert at.cost_epochs.iloc[0] == 2.5 and at.cost_epochs.iloc[1:].isna().all()
    png = tmp_path / "fig" / "detection.png"
    assert png.stat().st_size > 0 and Image.open(png).size[0] > 300
    assert no_partials(tmp_path)


# ---------------------------------------------------------------- gallery
def test_harmful_gallery_png_with_noisy_marker(tmp_path):
    data = digits_like(n=120)
    _, noisy = flip_labels(data.train.labels, 0.1, 10, 0)
    frame = random_frame(data, noisy=noisy)
    path = report.gallery_path(tmp_path, "Ours", 3)
    assert path == tmp_path / "fig" / "harmful_ours_seed3.png"
    written = report.harmful_gallery(data, frame, path, n=32, title="Ours, seed 3", true_labels=data.train.labels)
    assert written == path and path.stat().st_size > 0
    with Image.open(path) as img:
        width, height = img.size
    assert width > height > 200                 # 8 columns x 4 rows
    rgb = digits_like(n=20, channels=3, name="cifar10")
    small = report.harmful_gallery(rgb, random_frame(rgb), tmp_path / "fig" / "rgb.png", n=5)
    assert small.suffix == ".png" and small.stat().st_size > 0
    assert no_partials(tmp_path)


def test_harmful_gallery_csv_fallback(tmp_path):
    data = digits_like(n=150)
    frame = random_frame(data, noisy=np.zeros(150, bool))
    written = report.harmful_gallery(data, frame, report.gallery_path(tmp_path, "Hara", 0), n=120)
    assert written == tmp_path / "fig" / "harmful_hara_seed0.csv"
    assert not (tmp_path / "fig" / "harmful_hara_seed0.png").exists()
    table = pd.read_csv(written)
    assert len(table) == 120 and list(table["rank"][:3]) == [1, 2, 3]
    assert list(table["datasource_index"]) == list(frame["datasource_index"][:120])
    assert {"x:image", "y:label", "influence", "noisy"} <= set(table.columns)
    # non-image data (e.g. feature vectors stored as N x 1 x 1 x D) also gets a CSV
    flat = DataBundle("feat", make_split(np.zeros((150, 1, 1, 8)), data.train.labels, data.train.ids),
                      data.val, data.test, 10, (0.5,), (0.5,))
    assert report.harmful_gallery(flat, frame, tmp_path / "g.png", n=10).suffix == ".csv"
    assert no_partials(tmp_path)


# ---------------------------------------------------------------- cleansed dataset
def test_cleansed_csv_builtin_digits_round_trip(tmp_path):
    data = load_dataset("digits", 2)
    frame = random_frame(data, seed=5)
    csv = tmp_path / "influence.csv"
    write_influence_csv(csv, frame)
    frame = read_influence_csv(csv, len(data.train))
    n = 40
    files = report.write_cleansed_csv(data, frame, n, tmp_path, None, method="Ours", seed=2)
    assert files.train == tmp_path / "cleansed" / "ours_seed2_remove40.csv"
    table = pd.read_csv(files.train)
    assert list(table.columns) == ["x:image", "y:label"] and len(table) == len(data.train) - n
    removed = set(frame["datasource_index"][:n])
    kept = np.array([i for i in range(len(data.train)) if i not in removed])
    expected = {f"../images/{data.train.ids[i]}.png" for i in removed}
    assert not expected & set(table["x:image"])
    assert (tmp_path / "images" / "digits").is_dir() and no_partials(tmp_path)
    back = load_dataset(str(files.train), 2, val_csv=str(files.val), test_csv=str(files.test))
    assert len(back.train) == len(data.train) - n and back.image_shape == (1, 32, 32)
    assert np.array_equal(back.train.labels, data.train.labels[kept])
    for row in (0, 1, len(kept) // 2, len(kept) - 1):
        assert np.array_equal(back.train.images[row], data.train.images[kept[row]])
    assert np.array_equal(back.val.images, data.val.images) and np.array_equal(back.test.labels, data.test.labels)
    # an existing complete result is not redone; skip_existing=False rewrites it
    stamp = files.train.stat().st_mtime_ns
    assert report.write_cleansed_csv(data, frame, n, tmp_path, None, method="Ours", seed=2) == files
    assert files.train.stat().st_mtime_ns == stamp
    report.write_cleansed_csv(data, frame, n, tmp_path, None, method="Ours", seed=2, skip_existing=False)
    assert pd.read_csv(files.train).equals(table)
    # a second call reuses the exported images and writes another n
    again = report.write_cleansed_csv(data, frame, 0, tmp_path, None, method="Ours", seed=2)
    assert len(pd.read_csv(again.train)) == len(data.train)
    assert "--val-csv" in files.command()


def _own_dataset(root: Path, n: int = 30) -> Path:
    """An NNC CSV dataset with RGB PNGs in sub-folders, CSVs in root."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("validation", 10), ("test", 10)):
        rows = []
        for i in range(count):
            rel = f"img/{split}/{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB").save(root / rel)
            rows.append({"x:image": rel, "y:label": i % 3})
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return root / "train.csv"


def test_cleansed_csv_own_data_references_original_images(tmp_path):
    train_csv = _own_dataset(tmp_path / "data")
    data = load_dataset(str(train_csv), 0)
    frame = random_frame(data, seed=1)
    out = tmp_path / "runs" / "out"
    roots = report.image_roots(str(train_csv))
    assert roots == {k: train_csv.parent for k in ("train", "val", "test")}
    files = report.write_cleansed_csv(data, frame, 5, out, roots, method="Hara", seed=0)
    table = pd.read_csv(files.train)
    assert len(table) == 25 and table["x:image"][0].startswith("../../../data/img/train/")
    assert not (out / "images").exists()                    # referenced, not copied
    removed = set(frame["datasource_index"][:5])
    kept = [i for i in range(30) if i not in removed]
    assert list(table["x:image"]) == [f"../../../data/{data.train.ids[i]}" for i in kept]
    back = load_dataset(str(files.train), 0, val_csv=str(files.val), test_csv=str(files.test))
    assert len(back.train) == 25 and back.image_shape == (3, 40, 40)
    assert np.array_equal(back.train.images, data.train.images[kept])
    assert np.array_equal(back.val.images, data.val.images) and np.array_equal(back.test.images, data.test.images)
    # a single folder as image_root works the same
    same = report.write_cleansed_csv(data, frame, 5, out, train_csv.parent, method="Hara", seed=0,
                                     skip_existing=False)
    assert pd.read_csv(same.train).equals(table)


def test_cleansed_csv_rejects_bad_n(tmp_path):
    data = digits_like(n=20)
    frame = random_frame(data)
    for n in (-1, 20):
        with pytest.raises(UserError, match="cannot remove"):
            report.write_cleansed_csv(data, frame, n, tmp_path, None)
    with pytest.raises(UserError, match="once each"):
        report.write_cleansed_csv(data, frame.iloc[:10], 2, tmp_path, None)


def test_image_file_name_is_safe():
    assert str(report.image_file_name("mnist/train/12")) == "mnist/train/12.png"
    assert str(report.image_file_name("cifar10/data_batch_1/5")) == "cifar10/data_batch_1/5.png"
    assert str(report.image_file_name("../a b/c.jpg")) == "a_b/c.png"
    assert str(report.image_file_name("/abs/x")) == "abs/x.png"


# ---------------------------------------------------------------- the reports wired into the pipeline
NOISY_ARGS = ["-ds", "digits", "-m", "logreg", "-e", "2", "--n-train", "200", "--n-val", "100", "--n-test", "100",
              "--label-noise", "0.1", "--cleanse", "20", "-r", "0", "10", "-j", "1", "--no-progress"]
METHOD_NAMES = ("Hara", "Ours", "Random")


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """One digits run with 10% label noise, --cleanse 20 and the default gallery (about 5 s)."""
    import eval_sgd_influence
    out = tmp_path_factory.mktemp("noisy") / "out"
    assert eval_sgd_influence.main(["-o", str(out), *NOISY_ARGS]) == 0
    clean = load_dataset("digits", 0, n_train=200, n_val=100, n_test=100)
    return out, clean


def test_pipeline_label_noise_flips_train_labels_only(noisy_run):
    out, clean = noisy_run
    masks = []
    for m in METHOD_NAMES:
        csv = out / "influence" / m / f"influence_{m.lower()}_0.csv"
        frame = read_influence_csv(csv, 200)          # the 5-column file is accepted
        assert list(frame.columns) == ["x:image", "y:label", "influence", "datasource_index", "noisy"]
        assert frame["noisy"].isin([0, 1]).all() and frame["noisy"].sum() == 20
        idx = frame["datasource_index"].to_numpy()
        noisy = np.zeros(200, bool)
        noisy[idx] = frame["noisy"].to_numpy().astype(bool)
        labels = np.empty(200, np.int64)
        labels[idx] = frame["y:label"].to_numpy()
        assert np.all(labels[noisy] != clean.train.labels[noisy])          # flipped to another class
        assert np.array_equal(labels[~noisy], clean.train.labels[~noisy])  # the others untouched
        masks.append(noisy)
    assert all(np.array_equal(masks[0], k) for k in masks[1:])            # one noise per trial
    val = pd.read_csv(out / "cleansed" / "validation_seed0.csv")
    test = pd.read_csv(out / "cleansed" / "test.csv")
    assert np.array_equal(val["y:label"], clean.val.labels) and np.array_equal(test["y:label"], clean.test.labels)
    assert json.loads((out / "manifest.json").read_text())["label_noise"] == 0.1


def test_pipeline_writes_galleries_detection_and_cache_table(noisy_run):
    out, _ = noisy_run
    for m in METHOD_NAMES:
        png = report.gallery_path(out, m, 0)
        assert png.name == f"harmful_{m.lower()}_seed0.png"
        with Image.open(png) as img:
            assert img.size[0] > img.size[1] > 200                  # 8 columns x 4 rows
    curves = pd.read_csv(out / "summary" / "detection.csv")
    assert list(curves.columns) == report.DETECTION_COLUMNS and sorted(curves.method.unique()) == list(METHOD_NAMES)
    assert len(curves) == 3 * 101 and (curves.seed == 0).all()
    last = curves[curves.checked_fraction == 1.0].set_index("method")["found_fraction"]
    assert (last == 1.0).all() and len(last) == 3
    assert (curves[curves.checked_fraction == 0.0]["found_fraction"] == 0.0).all()
    # Hara's curve at 10% checked equals the flipped share of its 20 most harmful rows
    hara = read_influence_csv(out / "influence" / "Hara" / "influence_hara_0.csv", 200)
    at10 = curves[(curves.method == "Hara") & (curves.checked_fraction == 0.1)]["found_fraction"].item()
    assert at10 == pytest.approx(hara["noisy"][:20].sum() / 20)
    assert (out / "fig" / "detection.png").stat().st_size > 10_000
    table = pd.read_csv(out / "summary" / "cache_table.csv").set_index("method")
    assert list(table.index) == ["All parameters", "Hara", "Ours"]
    assert table.loc["Hara", "files"] == math.ceil(200 / 32) == 7 and table.loc["All parameters", "files"] == 14
    assert (table.n_train == 200).all() and (table.epochs == 2).all() and (table.dataset == "digits").all()
    measured = pd.read_csv(out / "summary" / "cache_size.csv").set_index("method")
    assert table.loc["Hara", "measured_bytes"] == measured.loc["Hara", "bytes"] == table.loc["Hara", "bytes"]
    assert table.loc["Ours", "measured_bytes"] == table.loc["Ours", "param_file_bytes"]
    assert no_partials(out)


def test_pipeline_cleansed_csv_loads_and_trains(noisy_run, tmp_path):
    import eval_sgd_influence
    out, clean = noisy_run
    for m in METHOD_NAMES:
        csv = out / "cleansed" / f"{m.lower()}_seed0_remove20.csv"
        table = pd.read_csv(csv)
        assert list(table.columns) == ["x:image", "y:label"] and len(table) == 180
        frame = read_influence_csv(out / "influence" / m / f"influence_{m.lower()}_0.csv", 200)
        removed = {f"../images/{i}.png" for i in frame["x:image"][:20]}
        kept = {f"../images/{i}.png" for i in frame["x:image"][20:]}
        assert set(table["x:image"]) == kept and not removed & set(table["x:image"])
        # the kept samples carry the labels the trial trained on (flipped ones included)
        given = dict(zip(frame["x:image"], frame["y:label"]))
        assert [given[p[len("../images/"):-len(".png")]] for p in table["x:image"]] == list(table["y:label"])
    csv = out / "cleansed" / "ours_seed0_remove20.csv"
    val, test = out / "cleansed" / "validation_seed0.csv", out / "cleansed" / "test.csv"
    back = load_dataset(str(csv), 0, val_csv=str(val), test_csv=str(test))
    assert (len(back.train), len(back.val), len(back.test)) == (180, 100, 100)
    assert np.array_equal(back.test.images, clean.test.images)
    again = tmp_path / "again"
    assert eval_sgd_influence.main(["-o", str(again), "-ds", str(csv), "--val-csv", str(val), "--test-csv", str(test),
                                    "-m", "logreg", "-e", "1", "-r", "0", "--methods", "Random", "--gallery", "0",
                                    "-j", "1", "--no-progress"]) == 0
    assert len(pd.read_csv(again / "influence" / "Random" / "influence_random_0.csv")) == 180
    assert not (again / "fig" / "harmful_random_seed0.png").exists() and not (again / "cleansed").exists()
    assert not (again / "summary" / "detection.csv").exists()


def test_pipeline_rerun_keeps_reports(noisy_run):
    import eval_sgd_influence
    out, _ = noisy_run
    files = [report.gallery_path(out, m, 0) for m in METHOD_NAMES] + sorted((out / "cleansed").glob("*.csv"))
    stamp = {f: f.stat().st_mtime_ns for f in files}
    assert eval_sgd_influence.main(["-o", str(out), *NOISY_ARGS]) == 0
    assert {f: f.stat().st_mtime_ns for f in files} == stamp


def test_changed_label_noise_is_refused_unless_overwrite(tmp_path):
    import eval_sgd_influence
    out = tmp_path / "o"
    base = ["-o", str(out), "-m", "logreg", "-e", "1", "--n-train", "100", "--n-val", "50", "--n-test", "50",
            "-r", "0", "--methods", "Random", "--gallery", "0", "-j", "1", "--no-progress"]
    assert eval_sgd_influence.main(base + ["--label-noise", "0.1"]) == 0
    with pytest.raises(UserError, match=r"other settings \(label_noise 0.1 -> 0.2\).*--overwrite"):
        eval_sgd_influence.main(base + ["--label-noise", "0.2"])
    with pytest.raises(UserError, match=r"label_noise 0.1 -> 0.0"):
        eval_sgd_influence.main(base)
    assert eval_sgd_influence.main(base + ["--label-noise", "0.2", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["label_noise"] == 0.2
    assert pd.read_csv(out / "influence" / "Random" / "influence_random_0.csv")["noisy"].sum() == 20
    # a manifest written before label noise existed means no noise
    assert eval_sgd_influence.main(base + ["--overwrite"]) == 0
    manifest = {k: v for k, v in json.loads((out / "manifest.json").read_text()).items() if k != "label_noise"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert eval_sgd_influence.main(base) == 0
    with pytest.raises(UserError, match=r"label_noise 0.0 -> 0.3"):
        eval_sgd_influence.main(base + ["--label-noise", "0.3"])


def test_report_flags_reach_every_driver(capsys):
    import eval_influence_functions
    import eval_sgd_influence
    import eval_turnover_dropout
    args = ["--label-noise", "0.25", "--gallery", "0", "--cleanse", "5", "50", "--validate", "3", "-e", "4"]
    from estimators import REGISTRY
    for driver in (eval_sgd_influence, eval_influence_functions, eval_turnover_dropout):
        cfg = driver.DRIVER.config(args, REGISTRY)
        assert (cfg.data.label_noise, cfg.reports.gallery, list(cfg.reports.cleanse), cfg.removal.validate,
                cfg.train.epochs) == (0.25, 0, [5, 50], 3, 4)
        assert cfg.manifest(REGISTRY)["label_noise"] == 0.25
        default = driver.DRIVER.config([], REGISTRY)
        assert (default.data.label_noise, default.reports.gallery, list(default.reports.cleanse)) == (0.0, 32, [])
    for bad in ("1.0", "-0.1", "x"):
        with pytest.raises(SystemExit):
            eval_sgd_influence.DRIVER.parser(REGISTRY).parse_args(["--label-noise", bad])
        assert "[0, 1)" in capsys.readouterr().err


def test_cleanse_not_below_training_size_fails_before_training(tmp_path):
    from cleansing.config import make_config
    from cleansing.pipeline import run
    from estimators import REGISTRY
    cfg = make_config(out=str(tmp_path / "o"), model="logreg", epochs=1, n_train=100, n_val=50,
                      n_test=50, methods=("Random",), remove=(0,), cleanse=(10, 100), show_progress=False)
    with pytest.raises(UserError, match=r"--cleanse 100: .* 100 training samples"):
        run(cfg, REGISTRY)
    assert not (tmp_path / "o" / "weights").exists()


def test_figure5_draws_one_panel_per_run_and_refuses_unfinished_folders(tmp_path, capsys):
    import json

    import figure5
    from cleansing.cli import run_main
    folders = []
    for bs in (32, 64):
        f = tmp_path / f"bs{bs}"
        (f / "summary").mkdir(parents=True)
        (f / "manifest.json").write_text(json.dumps({"dataset": "digits", "model": "mlp", "batch_size": bs}))
        rows = [("No_Removal", 0, 0.90), ("Ours", 10, 0.91), ("Ours", 40, 0.92), ("Random", 10, 0.89)]
        pd.DataFrame([{"method": m, "n_drops": n, "n_trials": 3, "test_accuracy_mean": a, "test_accuracy_std": 0.01}
                      for m, n, a in rows]).to_csv(f / "summary" / "summary.csv", index=False)
        folders.append(str(f))
    assert figure5.panel(Path(folders[1]))[0] == "digits / mlp, batch 64 (3 trials)"
    out = tmp_path / "fig5.png"
    assert run_main(figure5.main, folders + ["-o", str(out)]) == 0
    from PIL import Image
    w, h = Image.open(out).size
    assert w > 1.8 * h  # two panels side by side
    assert run_main(figure5.main, [str(tmp_path / "missing"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no summary/summary.csv" in err[0] and "run the driver with -o" in err[0]


def test_detection_at_reads_the_curve_at_5_10_and_20_percent():
    """100 samples, 10 flipped at ranks 0-4 (found 50% in the first 5), 7-9 and 15-16."""
    noisy = np.zeros(100, bool)
    noisy[[0, 1, 2, 3, 4, 7, 8, 9, 15, 16]] = True
    ids, labels = np.arange(100).astype(str), np.zeros(100, int)
    frame = influence_frame(ids, labels, np.arange(100.0), noisy)
    at = report.detection_at(report.detection_curves({"Loss": frame}, seed=3), {"Loss": {3: 0.34}})
    assert at.to_dict("records") == [{"method": "Loss", "seed": 3, "found_at_5": 0.5, "found_at_10": 0.8,
                                      "found_at_20": 1.0, "cost_epochs": 0.34}]

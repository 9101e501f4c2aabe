"""User-facing outputs of a run: harmful-sample gallery, cleansed dataset, mislabel-detection
curves and the paper's Table 1 (parameter cache sizes).

Every file is written atomically (``common.fileio``): a reader never sees a half-written file.

* ``harmful_gallery``: ``fig/harmful_<method>_seed<k>.png``, the N most harmful training images
  (first rows of the influence CSV) with index, label and influence; a CSV for N > 100 or
  non-image data.
* ``write_cleansed_csv``: ``cleansed/<method>_seed<k>_remove<n>.csv``, the training set without
  the n most harmful samples, in NNC CSV format (``x:image,y:label``), with the trial's
  ``validation_seed<k>.csv`` and ``test.csv`` beside it. Own data: paths to the original images
  (relative to the cleansed CSV's folder). Built-in data: the images are exported once as PNGs
  under ``<out>/images/<id>.png`` (shared by all trials and methods).
* ``detection_curves`` / ``write_detection``: fraction of flipped labels found against the
  fraction of training data checked in influence order (Koh & Liang 2017, Fig. 6; Hara et al. 2019).
* ``cache_table_rows`` / ``write_cache_table``: the paper's Table 1 from a measured parameter file.
"""
from __future__ import annotations

import math
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from common.errors import UserError  # noqa: E402
from common.figures import save_figure, show_image  # noqa: E402
from common.fileio import partial_path, write_csv_atomic  # noqa: E402

from .paths import RunPaths  # noqa: E402

PathLike = Union[str, Path]
GALLERY_MAX = 100          # more images than this: a CSV instead of a picture
NNC_HEADER = ["x:image", "y:label"]

CLASS_NAMES: Dict[str, Sequence[str]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
}


def _root(out) -> Path:
    """The output folder of ``out`` (a RunPaths or a path; note ``Path.root`` is '/', not this)."""
    if isinstance(out, (str, os.PathLike)):
        return Path(out)
    return Path(out.root)


# ============================================================================ gallery
def gallery_path(out, method: str, seed: int) -> Path:
    """``<out>/fig/harmful_<method lower>_seed<k>.png``."""
    return RunPaths(_root(out)).gallery(method, seed)


def _is_image_data(images) -> bool:
    return isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1] in (1, 3) \
        and min(images.shape[2:]) >= 4


def _label_text(label: int, names: Optional[Sequence[str]]) -> str:
    if names is not None and 0 <= label < len(names):
        return f"{label} {names[label]}"
    return str(label)


def harmful_gallery(data, frame: pd.DataFrame, path: PathLike, n: int = 32, title: str = "",
                    true_labels: Optional[np.ndarray] = None,
                    class_names: Optional[Sequence[str]] = None) -> Path:
    """Grid of the ``n`` most harmful training images (the first ``n`` rows of ``frame``).

    ``frame``: a sorted influence table (``x:image,y:label,influence,datasource_index[,noisy]``);
    images come from ``data.train.images[datasource_index]``. Each cell shows its rank,
    ``#datasource_index``, the given label and the influence; rows with ``noisy == 1`` get a red
    frame and, when ``true_labels`` (the labels before flipping, by training position) are
    given, the original label. For non-image data or ``n > 100`` the same rows are written as
    ``path`` with suffix ``.csv`` instead. Returns the path written.
    """
    path = Path(path)
    n = int(min(max(n, 0), len(frame)))
    top = frame.iloc[:n].reset_index(drop=True)
    images = getattr(getattr(data, "train", None), "images", None)
    if n > GALLERY_MAX or not _is_image_data(images):
        csv = path.with_suffix(".csv")
        table = top.copy()
        table.insert(0, "rank", np.arange(1, n + 1))
        if true_labels is not None:
            table["true_label"] = np.asarray(true_labels)[table["datasource_index"].to_numpy()]
        write_csv_atomic(csv, table)
        return csv
    if class_names is None:
        class_names = CLASS_NAMES.get(str(getattr(data, "name", "")))
    noisy = top["noisy"].to_numpy().astype(bool) if "noisy" in top.columns else np.zeros(n, bool)
    ncol = max(1, min(10 if n > 40 else 8, n))
    nrow = max(1, math.ceil(n / ncol))
    img_in = 1.3 if class_names is not None else 1.1       # image edge, inches
    text_in, gap_in = 0.55, 0.14                          # 3 title lines above each image; gap between columns
    width = ncol * img_in + (ncol - 1) * gap_in + 0.3
    legend = (f"The {n} most harmful training samples, most harmful first. Each: rank. #datasource_index, "
              f"given label y, influence (negative: removing the sample lowers the validation loss).")
    if noisy.any():
        legend += (f" Red frame: label flipped by the label-noise setting ({int(noisy.sum())} of {n})"
                   + (", 'was' = label before flipping." if true_labels is not None else "."))
    chars = max(40, int(width * 72 / (9 * 0.52)))
    lines = ([title] if title else []) + textwrap.wrap(legend, chars)
    head_in = 0.15 + 0.19 * len(lines)
    height = head_in + nrow * (text_in + img_in) + 0.1
    fig, axes = plt.subplots(nrow, ncol, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.15 / width, right=1 - 0.15 / width, top=1 - (head_in + text_in) / height,
                        bottom=0.1 / height, wspace=gap_in / img_in, hspace=text_in / img_in)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        row = top.iloc[k]
        idx = int(row["datasource_index"])
        show_image(ax, images[idx])
        label = int(row["y:label"])
        text = f"{k + 1}. #{idx}\ny={_label_text(label, class_names)}"
        if noisy[k] and true_labels is not None:
            text += f" (was {int(true_labels[idx])})"
        text += f"\n{float(row['influence']):+.3g}"
        ax.set_title(text, fontsize=8, color="tab:red" if noisy[k] else "black", pad=2, linespacing=1.1)
        for side in ax.spines.values():
            side.set_visible(bool(noisy[k]))
            side.set_color("tab:red")
            side.set_linewidth(2.5)
    fig.text(0.5, 1 - 0.1 / height, "\n".join(lines), ha="center", va="top", fontsize=9, linespacing=1.25)
    save_figure(fig, path, dpi=110)
    return path


# ============================================================================ cleansed dataset
@dataclass(frozen=True)
class CleansedFiles:
    """The CSVs of one cleansed dataset: train (without the n most harmful), validation, test."""

    train: Path
    val: Path
    test: Path

    def command(self, driver: str = "eval_sgd_influence.py") -> str:
        """A command line that trains on the cleansed data with this project."""
        return f"python {driver} -ds {self.train} --val-csv {self.val} --test-csv {self.test}"


def image_roots(dataset: str, val_csv: Optional[str] = None,
                test_csv: Optional[str] = None) -> Optional[Dict[str, Path]]:
    """Folders the ids of own-CSV data are relative to ({'train','val','test'}); None for built-ins.

    The ids of own data are the paths as written in each CSV, relative to that CSV's folder; the
    validation and test CSVs found beside the training CSV share its folder.
    """
    if not str(dataset).lower().endswith(".csv"):
        return None
    train = Path(dataset).expanduser().parent
    return {"train": train,
            "val": Path(val_csv).expanduser().parent if val_csv else train,
            "test": Path(test_csv).expanduser().parent if test_csv else train}


def cleansed_csv_path(out, method: str, seed: int, n: int) -> Path:
    """``<out>/cleansed/<method lower>_seed<k>_remove<n>.csv``."""
    return RunPaths(_root(out)).cleansed_csv(method, seed, n)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def image_file_name(sample_id: str) -> PurePosixPath:
    """Relative PNG path derived from a sample id: ``mnist/train/12`` -> ``mnist/train/12.png``."""
    parts = []
    for part in PurePosixPath(str(sample_id).replace("\\", "/")).parts:
        if part in ("/", "", ".", ".."):
            continue
        parts.append(_UNSAFE.sub("_", part))
    if not parts:
        raise UserError(f"cannot derive an image file name from sample id {sample_id!r}")
    rel = PurePosixPath(*parts)
    if rel.suffix.lower() in _IMAGE_SUFFIXES:
        rel = rel.with_suffix("")
    return rel.with_name(rel.name + ".png")


def export_images(split, image_dir: Path) -> list:
    """Write each image of ``split`` once as ``image_dir/<id-derived name>.png``; return the paths.

    Existing files are kept (a file exists only when complete: each one is written to a temporary
    name and renamed). Images are written as stored (uint8, working size), grey ('L') or RGB.
    """
    paths, made = [], set()
    for image, sample_id in zip(split.images, split.ids):
        final = image_dir / image_file_name(sample_id)
        paths.append(final)
        if final.is_file():
            continue
        if final.parent not in made:
            final.parent.mkdir(parents=True, exist_ok=True)
            made.add(final.parent)
        img = np.asarray(image, dtype=np.uint8)
        pil = (Image.fromarray(img[0], "L") if img.shape[0] == 1
               else Image.fromarray(np.transpose(img, (1, 2, 0)), "RGB"))
        tmp = partial_path(final)
        try:
            pil.save(tmp, format="PNG")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return paths


def _relative_to(target: Path, folder: Path) -> str:
    """``target`` as seen from ``folder`` (relative when possible, else absolute), with '/'."""
    target, folder = Path(os.path.abspath(target)), Path(os.path.abspath(folder))
    try:
        return Path(os.path.relpath(target, folder)).as_posix()
    except ValueError:      # another drive (Windows)
        return target.as_posix()


def _split_paths(split, role: str, folder: Path, out_root: Path, roots: Optional[Mapping[str, Path]]) -> list:
    """The ``x:image`` values of ``split`` for a CSV in ``folder``."""
    if roots is None:
        files = export_images(split, RunPaths(out_root).images)
    else:
        base = Path(roots[role])
        files = [Path(i).expanduser() if Path(i).expanduser().is_absolute() else base / i for i in split.ids]
    return [_relative_to(f, folder) for f in files]


def _nnc_frame(paths: list, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"x:image": paths, "y:label": np.asarray(labels, dtype=np.int64)}, columns=NNC_HEADER)


def write_cleansed_csv(data, frame: pd.DataFrame, n: int, out_dir: PathLike,
                       image_root: Union[None, PathLike, Mapping[str, PathLike]] = None,
                       method: str = "method", seed: int = 0, skip_existing: bool = True) -> CleansedFiles:
    """Write the training set without the ``n`` most harmful samples as an NNC dataset.

    ``frame``: the trial's sorted influence table; the removed samples are its first ``n``
    ``datasource_index`` values; the others are written in training order with the labels the
    trial trained on. ``out_dir``: the run's output folder (or RunPaths). ``image_root``: None for
    built-in data (the trial's train/validation/test images are exported once as PNGs under
    ``<out>/images/``); for own CSV data the folder the ids are relative to (the training CSV's
    folder), or ``image_roots(...)``'s dict when validation/test CSVs live elsewhere.
    Writes ``cleansed/<method>_seed<k>_remove<n>.csv``, ``cleansed/validation_seed<k>.csv`` (this
    trial's validation split) and ``cleansed/test.csv``. Load with
    ``load_dataset(train, seed, val_csv=val, test_csv=test)``. ``skip_existing``: when the three
    CSVs exist already (every file is written atomically, so they are complete) nothing is redone.
    """
    train = data.train
    n_train = len(train)
    n = int(n)
    if not 0 <= n < n_train:
        raise UserError(f"cannot remove {n} of {n_train} training samples; choose 0 <= n < {n_train}")
    order = frame["datasource_index"].to_numpy(np.int64)
    if len(order) != n_train or not np.array_equal(np.sort(order), np.arange(n_train)):
        raise UserError(f"the influence table does not list the {n_train} training samples once each; "
                        f"delete its CSV and rerun")
    keep = np.ones(n_train, bool)
    keep[order[:n]] = False
    root = _root(out_dir)
    folder = RunPaths(root).cleansed
    folder.mkdir(parents=True, exist_ok=True)
    roots = None
    if image_root is not None:
        roots = dict(image_root) if isinstance(image_root, Mapping) else \
            {k: Path(image_root) for k in ("train", "val", "test")}

    files = CleansedFiles(cleansed_csv_path(root, method, seed, n), folder / f"validation_seed{seed}.csv",
                          folder / "test.csv")  # the trial's validation split and the test split beside it
    if skip_existing and all(f.is_file() for f in (files.train, files.val, files.test)):
        return files
    train_paths = _split_paths(train, "train", folder, root, roots)
    kept = np.flatnonzero(keep)
    write_csv_atomic(files.val, _nnc_frame(_split_paths(data.val, "val", folder, root, roots), data.val.labels))
    write_csv_atomic(files.test, _nnc_frame(_split_paths(data.test, "test", folder, root, roots), data.test.labels))
    write_csv_atomic(files.train, _nnc_frame([train_paths[i] for i in kept], train.labels[kept]))
    return files


# ============================================================================ detection curves
CHECKED_FRACTIONS = np.round(np.arange(101) / 100.0, 2)
DETECTION_COLUMNS = ["method", "seed", "checked_fraction", "found_fraction"]


def detection_curve(noisy_in_order: np.ndarray, checked: np.ndarray = CHECKED_FRACTIONS) -> np.ndarray:
    """Fraction of the flipped samples among the first ``round(c * n)`` samples, for each c."""
    noisy = np.asarray(noisy_in_order).astype(bool)
    total = int(noisy.sum())
    if total == 0:
        raise UserError("no flipped labels in the influence table; run with label noise to get detection curves")
    found = np.concatenate([[0], np.cumsum(noisy)])
    counts = np.floor(np.asarray(checked, np.float64) * len(noisy) + 0.5).astype(np.int64)
    return found[np.clip(counts, 0, len(noisy))] / total


def detection_curves(frames_by_method: Mapping[str, object], seed: Optional[int] = None,
                     checked: np.ndarray = CHECKED_FRACTIONS) -> pd.DataFrame:
    """Detection curves (columns method, seed, checked_fraction, found_fraction).

    ``frames_by_method``: method -> a sorted influence frame with a ``noisy`` column (trial
    ``seed``), or method -> {seed: frame}. Checked fractions 0, 0.01, ..., 1 of the training data,
    in influence order (most harmful first).
    """
    rows = []
    for method, value in frames_by_method.items():
        per_seed = value.items() if isinstance(value, Mapping) else [(seed, value)]
        for s, frame in per_seed:
            if "noisy" not in frame.columns:
                raise UserError(f"influence table of {method} (seed {s}) has no 'noisy' column; "
                                f"it was not computed with label noise")
            found = detection_curve(frame["noisy"].to_numpy(), checked)
            rows.append(pd.DataFrame({"method": method, "seed": s, "checked_fraction": checked,
                                      "found_fraction": found}))
    if not rows:
        return pd.DataFrame(columns=DETECTION_COLUMNS)
    return pd.concat(rows, ignore_index=True)[DETECTION_COLUMNS]


def plot_detection(curves: pd.DataFrame, path: PathLike, title: str = "",
                   noise_fraction: Optional[float] = None) -> Path:
    """Mean (+- std band) found fraction per method over seeds, the random diagonal and the oracle."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    x = np.linspace(0, 1, 101)
    ax.plot(x, x, color="0.45", ls="--", lw=1.2, label="random checking (y = x)")
    if noise_fraction:
        ax.plot(x, np.minimum(x / noise_fraction, 1.0), color="0.45", ls=":", lw=1.2,
                label=f"perfect ranking ({noise_fraction:.0%} flipped)")
    for k, (method, df) in enumerate(curves.groupby("method", sort=False)):
        g = df.groupby("checked_fraction")["found_fraction"]
        mean, std = g.mean(), g.std(ddof=0).fillna(0.0)
        seeds = df["seed"].nunique()
        # the colour cycle has 10 colours: the methods after the tenth reuse them with other dashes
        line, = ax.plot(mean.index, mean.values, lw=1.8, ls=("-", "--", "-.", ":")[(k // 10) % 4],
                        label=f"{method.replace('_', ' ')} ({seeds} trial{'s' if seeds != 1 else ''})")
        if seeds > 1:
            ax.fill_between(mean.index, (mean - std).values, (mean + std).values, color=line.get_color(), alpha=0.15)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of training data checked (influence order, most harmful first)")
    ax.set_ylabel("fraction of flipped labels found")
    if curves["seed"].nunique() > 1:
        title = (title + "\n" if title else "") + "mean over trials, shaded: +- std"
    ax.set_title(title or "mislabel detection", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8.5)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


def collect_detection_frames(out, methods: Sequence[str], seeds: Sequence[int]) -> Dict[str, Dict[int, pd.DataFrame]]:
    """method -> {seed: influence frame} for the influence CSVs of ``out`` that have a ``noisy`` column.

    Methods or seeds whose CSV is missing or has no ``noisy`` column (run without label noise)
    are left out; an empty dict means there is nothing to draw.
    """

    paths = RunPaths(_root(out))
    frames: Dict[str, Dict[int, pd.DataFrame]] = {}
    for method in methods:
        for seed in seeds:
            csv = paths.influence_csv(method, seed)
            if not csv.is_file():
                continue
            frame = pd.read_csv(csv)
            if "noisy" in frame.columns and frame["noisy"].sum() > 0:
                frames.setdefault(method, {})[seed] = frame
    return frames


#: the checked fractions of ``summary/detection_at.csv``
DETECTION_AT = (0.05, 0.10, 0.20)


def detection_at(curves: pd.DataFrame, costs: Optional[Mapping[str, Mapping[int, float]]] = None) -> pd.DataFrame:
    """Per method and seed: the fraction of flipped labels found in the first 5, 10 and 20% of the
    training data (``found_at_5`` ...), and ``cost_epochs`` from ``costs`` (method -> {seed: the
    method's measured seconds over one training epoch's}; NaN where unknown)."""
    costs = costs or {}
    rows = []
    for (method, seed), df in curves.groupby(["method", "seed"], sort=False):
        at = df.set_index("checked_fraction")["found_fraction"]
        row = {"method": method, "seed": seed}
        row.update({f"found_at_{round(100 * c)}": float(at.loc[c]) for c in DETECTION_AT})
        row["cost_epochs"] = float(costs.get(method, {}).get(seed, np.nan))
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "seed", *[f"found_at_{round(100 * c)}" for c in DETECTION_AT],
                                       "cost_epochs"])


def write_detection(out, frames_by_method: Mapping[str, object], title: str = "",
                    costs: Optional[Mapping[str, Mapping[int, float]]] = None) -> pd.DataFrame:
    """``summary/detection.csv``, ``summary/detection_at.csv`` (``detection_at``) and ``fig/detection.png``
    from method -> {seed: frame}; returns the curves."""
    curves = detection_curves(frames_by_method)
    paths = RunPaths(_root(out))
    write_csv_atomic(paths.run_table("detection"), curves)
    write_csv_atomic(paths.run_table("detection_at"), detection_at(curves, costs))
    noise = [float(f["noisy"].mean()) for v in frames_by_method.values()
             for f in (v.values() if isinstance(v, Mapping) else [v])]
    plot_detection(curves, paths.run_figure("detection"), title, float(np.mean(noise)) if noise else None)
    return curves

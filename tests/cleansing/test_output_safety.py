"""The output folder: --overwrite deletes only what the tool wrote, a rerun never reuses results made
from other inputs, and damaged or unlucky inputs end in one line (exit 2) with nothing else touched."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, copy_run, exit2, run_cli

FAST = ["-m", "logreg", "-e", "1", "--n-train", "100", "--n-val", "50", "--n-test", "50", "--methods", "Ours",
        "Random", "--gallery", "0"]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (relative path -> sha256), to show what a run touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def ok(res):
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished small run (Ours, Random; -r 0 10) to copy from."""
    out = tmp_path_factory.mktemp("done") / "o"
    ok(run_cli("-o", str(out), *FAST, "-r", "0", "10"))
    return out


# ---------------------------------------------------------------- --overwrite deletes only the tool's files
def test_overwrite_keeps_the_users_files(done_run, tmp_path):
    out = copy_run(done_run, tmp_path / "o")
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "data.csv").write_text("a,b\n1,2\n")
    exit2(run_cli("-o", str(out), *FAST[:2], "-e", "2", *FAST[4:], "-r", "0", "10"),
          "other settings", "epochs 1 -> 2", "--overwrite to recompute everything")
    ok(run_cli("-o", str(out), *FAST[:2], "-e", "2", *FAST[4:], "-r", "0", "10", "--overwrite"))
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "mine" / "data.csv").read_text() == "a,b\n1,2\n"
    assert json.loads((out / "manifest.json").read_text())["epochs"] == 2


def test_overwrite_refuses_a_foreign_file_inside_a_tool_folder(done_run, tmp_path):
    out = copy_run(done_run, tmp_path / "o")
    (out / "summary" / "notes.txt").write_text("mine")
    before = snapshot(out)
    exit2(run_cli("-o", str(out), *FAST[:2], "-e", "2", *FAST[4:], "-r", "0", "--overwrite"),
          "summary/notes.txt was not written by this tool")
    assert snapshot(out) == before


def test_folder_without_manifest_is_never_deleted(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        exit2(run_cli("-o", str(out), *FAST, "-r", "0", *extra), "holds no manifest of this tool")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_empty_output_is_a_usage_error(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    res = run_cli("-o", "", *FAST, "-r", "0", "--overwrite", cwd=tmp_path)
    exit2(res, "-o/--output: must not be empty")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_current_folder_is_never_deleted(tmp_path):
    ok(run_cli("-o", ".", *FAST, "-r", "0", cwd=tmp_path))
    (tmp_path / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    exit2(run_cli("-o", ".", *FAST[:2], "-e", "2", *FAST[4:], "-r", "0", "--overwrite", cwd=tmp_path),
          "refusing to delete", "the current folder")
    assert snapshot(tmp_path) == before


def test_repository_and_home_are_never_deleted(tmp_path):
    sys.path.insert(0, str(ROOT))
    from cleansing.outdir import check_deletable
    from common.errors import UserError
    for folder in (ROOT, ROOT.parent, Path.home()):
        with pytest.raises(UserError, match="refusing to delete"):
            check_deletable(folder, [])
    check_deletable(tmp_path, [])  # a folder of its own is fine


def test_overwrite_refuses_a_folder_holding_the_input_data(done_run, tmp_path):
    out = tmp_path / "o"
    ok(run_cli("-o", str(out), *FAST, "-r", "0", "--cleanse", "10"))
    csv = out / "cleansed" / "ours_seed0_remove10.csv"
    assert csv.is_file()
    before = snapshot(out)
    exit2(run_cli("-o", str(out), "-ds", str(csv), "--val-csv", str(csv.parent / "validation_seed0.csv"),
                  "--test-csv", str(csv.parent / "test.csv"), "-m", "logreg", "-e", "1", "--methods", "Random",
                  "-r", "0", "--overwrite"), "refusing to delete", "holds the input data")
    assert snapshot(out) == before


def test_output_that_is_a_file_or_a_symlink(tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    exit2(run_cli("-o", str(f), *FAST, "-r", "0"), "is an existing file, not a folder")
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    exit2(run_cli("-o", str(link), *FAST, "-r", "0", "--overwrite"), "is a symbolic link")
    assert f.read_text() == "mine" and list(real.iterdir()) == []


# ---------------------------------------------------------------- reruns never reuse results of other inputs
def test_retrain_all_recomputes_only_the_retrainings(tmp_path):
    out = tmp_path / "o"
    two = [*FAST[:2], "-e", "2", *FAST[4:], "-r", "0", "10"]
    ok(run_cli("-o", str(out), *two))
    before = snapshot(out)
    exit2(run_cli("-o", str(out), *two, "-ra"), "retrain_all False -> True",
          "add --overwrite to recompute the retrainings and reports")
    ok(run_cli("-o", str(out), *two, "-ra", "--overwrite"))
    after = snapshot(out)
    kept = [k for k in before if k.startswith(("weights/", "influence/"))]
    assert kept and all(after[k] == before[k] for k in kept)  # training and influence reused
    score = "score/Ours/score_delete_worst_10_seed_0.csv"
    assert after[score] != before[score]  # every epoch retrained: one score row per epoch
    assert len((out / score).read_text().splitlines()) == 3


def test_changed_validation_set_recomputes_the_stored_validation_gradient(done_run, tmp_path):
    out = copy_run(done_run, tmp_path / "o")
    grad = "weights/seed_00/validation_grad.npz"
    before = snapshot(out)
    assert grad in before
    other = [a if a != "50" or FAST[i - 1] != "--n-val" else "40" for i, a in enumerate(FAST)]
    exit2(run_cli("-o", str(out), *other, "-r", "0", "10"), "n_val 50 -> 40")
    ok(run_cli("-o", str(out), *other, "-r", "0", "10", "--overwrite"))
    after = snapshot(out)
    assert after["weights/seed_00/final.h5"] == before["weights/seed_00/final.h5"]  # training kept
    assert after[grad] != before[grad]
    fresh = tmp_path / "fresh"
    ok(run_cli("-o", str(fresh), *other, "-r", "0", "10"))
    influence = "influence/Ours/influence_ours_0.csv"
    assert after[influence] == snapshot(fresh)[influence]  # as if the new validation set had always been used


def test_new_remove_value_reuses_the_training(done_run, tmp_path):
    out = copy_run(done_run, tmp_path / "o")
    before = snapshot(out)
    ok(run_cli("-o", str(out), *FAST, "-r", "0", "10", "20"))
    after = snapshot(out)
    assert all(after[k] == v for k, v in before.items() if not k.startswith(("summary/", "fig/", "logs/")))
    assert "score/Ours/score_delete_worst_20_seed_0.csv" in after


def write_digits_csv(folder: Path) -> Path:
    """Own NNC CSV data made of scikit-learn's digits: 120 train, 40 validation, 40 test rows."""
    from sklearn.datasets import load_digits
    d = load_digits()
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(200):
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), "L").save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{d.target[i]}")
    for name, part in (("train", rows[:120]), ("validation", rows[120:160]), ("test", rows[160:])):
        (folder / f"{name}.csv").write_text("x:image,y:label\n" + "\n".join(part) + "\n")
    (folder / "test2.csv").write_text("x:image,y:label\n" + "\n".join(rows[:40]) + "\n")
    return folder / "train.csv"


CSV_ARGS = ["-m", "logreg", "-e", "1", "--methods", "Ours", "Random", "--gallery", "0", "-r", "0", "10"]


def test_changed_test_csv_or_relabelled_rows_are_caught(tmp_path):
    train = write_digits_csv(tmp_path / "data")
    out = tmp_path / "o"
    ok(run_cli("-o", str(out), "-ds", str(train), *CSV_ARGS))
    before = snapshot(out)
    other = str(tmp_path / "data" / "test2.csv")
    exit2(run_cli("-o", str(out), "-ds", str(train), *CSV_ARGS, "--test-csv", other), "test_data",
          "recompute the retrainings and reports")
    ok(run_cli("-o", str(out), "-ds", str(train), *CSV_ARGS, "--test-csv", other, "--overwrite"))
    after = snapshot(out)
    assert all(after[k] == v for k, v in before.items() if k.startswith(("weights/", "influence/")))
    assert after["score/No_Removal/score_delete_worst_0_seed_0.csv"] != \
        before["score/No_Removal/score_delete_worst_0_seed_0.csv"]

    lines = train.read_text().splitlines()
    for i in range(1, 51):  # relabel 50 rows
        x, y = lines[i].split(",")
        lines[i] = f"{x},{(int(y) + 1) % 10}"
    train.write_text("\n".join(lines) + "\n")
    exit2(run_cli("-o", str(out), "-ds", str(train), *CSV_ARGS, "--test-csv", other), "train_data",
          "recompute everything")
    ok(run_cli("-o", str(out), "-ds", str(train), *CSV_ARGS, "--test-csv", other, "--overwrite"))
    assert snapshot(out)["weights/seed_00/final.h5"] != after["weights/seed_00/final.h5"]


def test_n_train_decodes_only_the_rows_kept(tmp_path):
    train = write_digits_csv(tmp_path / "data")
    with open(train, "a") as fh:  # rows beyond --n-train name images that do not exist
        fh.write("".join(f"img/missing_{i}.png,{i % 10}\n" for i in range(1000)))
    ok(run_cli("-o", str(tmp_path / "o"), "-ds", str(train), "--n-train", "120", *CSV_ARGS))
    exit2(run_cli("-o", str(tmp_path / "o2"), "-ds", str(train), *CSV_ARGS), "missing_0.png")


@pytest.mark.parametrize("label,text", [
    ("1000000000", "label 1000000000 is too large; labels must be class indices 0, 1, 2, ... below 10000"),
    ("1_0", "label '1_0' is not an integer in plain digits"),
    ("-1", "label -1 is negative"),
])
def test_bad_labels(tmp_path, label, text):
    train = write_digits_csv(tmp_path / "data")
    lines = train.read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + "," + label
    train.write_text("\n".join(lines) + "\n")
    exit2(run_cli("-o", str(tmp_path / "o"), "-ds", str(train), *CSV_ARGS), "train.csv, line 4", text)
    assert not (tmp_path / "o").exists()


def test_class_missing_from_training_is_a_warning(tmp_path):
    train = write_digits_csv(tmp_path / "data")
    lines = train.read_text().splitlines()
    train.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if not ln.endswith(",9")]) + "\n")
    res = ok(run_cli("-o", str(tmp_path / "o"), "-ds", str(train), *CSV_ARGS))
    assert "WARNING: the validation set has class(es) 9 that no training sample has" in res.stderr
    assert res.stderr.count("the validation set has class(es) 9") == 1  # once a run, not once a task (issue 38)


# ---------------------------------------------------------------- damaged files and unlucky moments
@pytest.mark.parametrize("content,text", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"epochs": "1"}', "epochs is '1' (str), where this tool writes a number"),
])
def test_damaged_manifest(done_run, tmp_path, content, text):
    out = copy_run(done_run, tmp_path / "o")
    (out / "manifest.json").write_text(content)
    before = snapshot(out)
    exit2(run_cli("-o", str(out), *FAST, "-r", "0", "10"), "manifest.json", text)
    assert snapshot(out) == before


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_damaged_trace(done_run, tmp_path, damage):
    out = copy_run(done_run, tmp_path / "o")
    trace = out / "weights" / "seed_00" / "trace.npz"
    data = trace.read_bytes()
    trace.write_bytes(data[: len(data) // 2] if damage == "truncate" else np.random.default_rng(0).bytes(4000))
    exit2(run_cli("-o", str(out), *FAST, "-r", "0", "10"), "trace.npz is not a valid trace")


@pytest.mark.parametrize("cut", ["header", "number"])
def test_damaged_score_csv(done_run, tmp_path, cut):
    out = copy_run(done_run, tmp_path / "o")
    score = out / "score" / "Ours" / "score_delete_worst_10_seed_0.csv"
    text = score.read_text()
    score.write_text(text.splitlines()[0] + "\n" if cut == "header" else text[:-3])
    exit2(run_cli("-o", str(out), *FAST, "-r", "0", "10"), "score_delete_worst_10_seed_0.csv is damaged",
          "delete it and rerun")


def test_every_remove_value_skipped_fails_and_leaves_the_folder_reusable(tmp_path):
    out = tmp_path / "o"
    exit2(run_cli("-o", str(out), *FAST, "-r", "100", "500"), "every -r value (100 500) is at or above the 100")
    assert not out.exists()  # nothing of the failed first run is left
    ok(run_cli("-o", str(out), *FAST[:2], "-e", "2", *FAST[4:], "-r", "0"))  # other settings: no refusal


def test_failed_first_run_in_an_existing_empty_folder_leaves_it_empty(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    exit2(run_cli("-o", str(out), *FAST, "-bs", "500", "-r", "0"), "batch size 500 is larger")
    assert out.is_dir() and list(out.iterdir()) == []


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from cleansing.outdir import FolderLock; p = Path(sys.argv[2]); p.mkdir(); "
        "(p / 'manifest.json').write_text('{}'); lk = FolderLock(p).acquire(); print('locked', flush=True); "
        "time.sleep(60)"), str(ROOT), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        exit2(run_cli("-o", str(out), *FAST, "-r", "0"), f"in use by another run (process {holder.pid})")
    finally:
        holder.kill()
        holder.wait()


def test_disk_full_is_one_line(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({res.stderr.decode().strip()})")
    try:
        out = mnt / "o"  # cnn6 writes 1.2 MB per parameter file: the 6 MiB fill up during training
        r = run_cli("-o", str(out), "-m", "cnn6", "-e", "2", "--n-train", "64", "--n-val", "32", "--n-test", "32",
                    "--methods", "Hara", "Random", "-r", "0", "--gallery", "0")
        exit2(r, "no space left on the device while writing", "rerun the same command to continue")
        assert not list(mnt.rglob("*.partial*"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_in_a_writer_is_one_line(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    import errno

    from common.errors import UserError
    from common.fileio import write_text_atomic

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match="no space left on the device while writing .*x.json; free some space"):
        write_text_atomic(tmp_path / "x.json", "{}")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_estimator_option_recomputes_only_that_estimator(tmp_path):
    out = tmp_path / "o"
    args = [*FAST[:8], "--methods", "Influence_functions", "Random", "--gallery", "0", "-r", "0", "10",
            "--solver", "cg", "--cg-iters", "3"]
    ok(run_cli("-o", str(out), *args, script="eval_influence_functions.py"))
    before = snapshot(out)
    exit2(run_cli("-o", str(out), *args, "--damping", "0.5", script="eval_influence_functions.py"),
          "damping 0.1 -> 0.5", "recompute the outputs of damping")
    ok(run_cli("-o", str(out), *args, "--damping", "0.5", "--overwrite", script="eval_influence_functions.py"))
    after = snapshot(out)
    same = [k for k in before if k.startswith(("weights/", "influence/Random/", "score/Random/", "score/No_Removal"))]
    assert same and all(after[k] == before[k] for k in same)
    changed = "influence/Influence_functions/influence_influence_functions_0.csv"
    assert after[changed] != before[changed]

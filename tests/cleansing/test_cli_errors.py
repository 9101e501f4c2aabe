"""Bad input ends in one line on stderr, a non-zero exit code, no traceback, nothing half-written."""
import shutil
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize("args,fragments", [
    (["-e", "0"], ["-e/--epochs: 0 must be at least 1"]),
    (["-lr", "-0.1"], ["-lr/--learning-rate", "must be a positive number"]),
    (["-lr", "0"], ["must be a positive number"]),
    (["-bs", "0"], ["-bs/--batch-size: 0 must be at least 1"]),
    (["-r", "-5"], ["-r/--remove: -5 must not be negative"]),
    (["-m", "resnet"], ["invalid choice: 'resnet'"]),
    (["-c", "cudnn"], ["nnabla CUDA extension", "pip install nnabla-ext-cuda120"]),
])
def test_bad_options(tmp_path, args, fragments):
    assert_one_line_error(run_cli("-o", str(tmp_path / "o"), *args), *fragments)


def test_batch_larger_than_data(tmp_path):
    res = run_cli("-o", str(tmp_path / "o"), "-m", "logreg", "--n-train", "20", "-bs", "64")
    assert_one_line_error(res, "batch size 64 is larger than the 20 training samples; lower -bs")


def test_dataset_offline_without_copy(tmp_path):
    res = run_cli("-o", str(tmp_path / "o"), "-ds", "mnist", "--data-dir", str(tmp_path / "nothing"))
    assert_one_line_error(res, "train-images-idx3-ubyte")


def test_truncated_mnist_file(tmp_path, mnist_dir):
    d = tmp_path / "mnist"
    d.mkdir()
    for f in Path(mnist_dir).glob("*.gz"):
        shutil.copy(f, d / f.name)
    data = (d / "train-labels-idx1-ubyte.gz").read_bytes()
    (d / "train-labels-idx1-ubyte.gz").write_bytes(data[: len(data) // 2])
    res = run_cli("-o", str(tmp_path / "o"), "-ds", "mnist", "--data-dir", str(d), "--n-train", "100")
    assert_one_line_error(res, "train-labels-idx1-ubyte")
    assert not list((tmp_path / "o").rglob("*.csv"))


def test_own_csv_with_wrong_header(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("image,label\na.png,1\n")
    (tmp_path / "test.csv").write_text("x:image,y:label\na.png,1\n")
    assert_one_line_error(run_cli("-o", str(tmp_path / "o"), "-ds", str(csv)), "train.csv", "x:image,y:label")


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = run_cli("-o", str(blocker / "out"), "-m", "logreg")
    assert_one_line_error(res, "cannot write to output folder", "choose another -o")


def test_loss_becoming_nan_stops_with_a_hint_and_keeps_nothing(tmp_path):
    out = tmp_path / "o"
    res = run_cli("-o", str(out), "-m", "mlp", "-lr", "1e9", "-e", "1", "--n-train", "200", "-r", "0")
    assert_one_line_error(res, "the training diverged: its loss became", "epoch 0", "lower the learning rate (-lr)")
    assert not (out / "weights" / "seed_00").exists()
    assert not list(out.rglob("*partial*"))


def test_changed_settings_are_refused_then_overwritten(tmp_path):
    out = str(tmp_path / "o")
    common = ["-o", out, "-m", "logreg", "-e", "1", "-r", "0", "--n-train", "100", "--methods", "Random"]
    assert run_cli(*common).returncode == 0
    assert_one_line_error(run_cli(*common[:-4], "-e", "2", "-r", "0", "--methods", "Random", "--n-train", "100"),
                          "holds a run with other settings", "epochs 1 -> 2", "--overwrite")
    res = run_cli(*common[:-4], "-e", "2", "-r", "0", "--methods", "Random", "--n-train", "100", "--overwrite")
    assert res.returncode == 0, res.stderr


def test_debug_shows_the_traceback(tmp_path):
    res = run_cli("-o", str(tmp_path / "o"), "-ds", "mnist", "--data-dir", str(tmp_path / "none"), "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr

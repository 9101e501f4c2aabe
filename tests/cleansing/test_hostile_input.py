"""Issue 38: the hostile-input probe's cases, each as a user meets it (CLI or Python API), asserting
the exit status, the one-line message and the exact files before and after."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import pandas as pd
import pytest

from cleansing.api import Cleanser
from common.errors import UserError
from estimators import REGISTRY
from tests.helpers import ROOT, copy_run, digits_arrays, exit2, run_cli, two_layer_tanh

FAST = ["-m", "logreg", "-e", "1", "--n-train", "100", "--n-val", "50", "--n-test", "50", "--methods", "Ours",
        "Random", "--gallery", "0", "-r", "0", "10"]


def tree(folder: Path) -> dict:
    """Every file and link under ``folder`` (relative path -> sha256 or link target), the lock included."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "o"
    res = run_cli("-o", str(out), *FAST)
    assert res.returncode == 0, res.stderr
    return out


# ---------------------------------------------------------------- 1: a refused --overwrite deletes nothing
@pytest.mark.parametrize("typo,message", [
    (["-lr", "0.2", "-r", "5000"], "every -r value (5000) is at or above the 100 training samples"),
    (["-bs", "500"], "batch size 500 is larger than the 100 training samples"),
    (["--cleanse", "120"], "--cleanse 120: cannot remove that many of the 100 training samples"),
])
def test_a_refused_overwrite_keeps_the_finished_run(done_run, tmp_path, typo, message):
    out = copy_run(done_run, tmp_path / "o")
    before = tree(out)
    exit2(run_cli("-o", str(out), *FAST, "--overwrite", *typo), message)
    assert tree(out) == before  # every file, the manifest included, as it was


# ---------------------------------------------------------------- 2: nothing written through a planted link
def test_a_planted_lock_link_is_refused_and_its_target_untouched(done_run, tmp_path):
    out = copy_run(done_run, tmp_path / "o")
    elsewhere = tmp_path / "precious.txt"
    elsewhere.write_text("do not touch")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(elsewhere)
    before = tree(out)
    exit2(run_cli("-o", str(out), *FAST), ".lock is a symbolic link", "remove the link or choose another -o")
    assert elsewhere.read_text() == "do not touch" and tree(out) == before


def test_a_planted_folder_link_is_refused_with_overwrite_too(done_run, tmp_path):
    out = copy_run(done_run, tmp_path / "o")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.csv").write_text("a\n1\n")
    ours = out / "score" / "Ours"
    subprocess.run(["rm", "-r", str(ours)], check=True)
    ours.symlink_to(elsewhere, target_is_directory=True)
    before, outside = tree(out), tree(elsewhere)
    for extra in ([], ["--overwrite", "-e", "2"]):
        exit2(run_cli("-o", str(out), *FAST, *extra), "score/Ours is a symbolic link", "writes nothing through links")
        assert tree(out) == before and tree(elsewhere) == outside


# ---------------------------------------------------------------- 3: Ctrl-C keeps the finished epochs
def test_ctrl_c_during_training_keeps_the_finished_epochs(tmp_path):
    out = tmp_path / "o"
    args = [sys.executable, str(ROOT / "eval_sgd_influence.py"), "--no-progress", "-j", "1", "-o", str(out),
            "-m", "cnn6", "-e", "6", "--n-train", "200", "--n-val", "50", "--n-test", "50", "--methods", "Random",
            "-r", "0", "--gallery", "0"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,  # SIGINT as in a terminal, even in CI
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    epochs = out / "weights" / "seed_00" / "epochs"
    deadline = time.time() + 240
    # sequential order: epoch 1, epoch 2, epoch 1's evaluation, epoch 3, ...
    while not (epochs / "epoch_001.csv").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert (epochs / "epoch_001.csv").is_file(), "epoch 1's evaluation never finished"
    time.sleep(0.3)
    assert not (epochs / "epoch_003_train.csv").is_file()
    proc.send_signal(signal.SIGINT)  # during epoch 3
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command to continue" in err
    kept = tree(out)
    for f in ("weights/seed_00/initial.h5", "weights/seed_00/trace.npz", "weights/seed_00/epochs/epoch_001.h5",
              "weights/seed_00/epochs/epoch_002.h5", "weights/seed_00/epochs/epoch_002_train.csv"):
        assert f in kept, f
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    log = pd.read_csv(out / "weights" / "seed_00" / "train_log.csv")
    assert list(log.epoch) == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------- 9, 10: failing starts leave nothing
def test_a_first_run_that_cannot_start_leaves_nothing(tmp_path):
    out = tmp_path / "o"
    exit2(run_cli("-o", str(out), *FAST, "-c", "cudnn"), "-c cudnn needs the nnabla CUDA extension")
    assert not out.exists()
    res = run_cli("-o", str(out), *FAST, "--scheduler", "tcp://127.0.0.1:9")
    assert res.returncode == 2 and not out.exists(), res.stderr


def test_a_lock_that_is_a_folder_is_one_line(done_run, tmp_path):
    out = copy_run(done_run, tmp_path / "o")
    (out / ".lock").unlink()
    (out / ".lock").mkdir()
    before = tree(out)
    exit2(run_cli("-o", str(out), *FAST), ".lock is a folder, not this tool's lock file")
    assert tree(out) == before


# ---------------------------------------------------------------- 11: the user's look-alike files stay
def test_files_named_like_temporaries_outside_the_tools_places_are_kept(done_run, tmp_path):
    out = copy_run(done_run, tmp_path / "o")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = [out / f"notes.partial-{dead.pid}.txt", out / "mine" / f"table.partial-{dead.pid}.csv",
            out / "logs" / f"diary.partial-{dead.pid}"]
    for f in mine:
        f.parent.mkdir(exist_ok=True)
        f.write_text("mine")
    stale = out / "logs" / f"timings_seed_0.partial-{dead.pid}.csv"
    stale.write_text("half")
    res = run_cli("-o", str(out), *FAST)
    assert res.returncode == 0, res.stderr
    assert all(f.read_text() == "mine" for f in mine) and not stale.exists()


# ---------------------------------------------------------------- 12: the summary is this run's
def test_the_summary_covers_what_this_run_asked_for(tmp_path):
    out = tmp_path / "o"
    assert run_cli("-o", str(out), *FAST, "-nt", "2").returncode == 0
    res = run_cli("-o", str(out), *FAST[:-5], "--methods", "Ours", "-r", "0", "--gallery", "0")
    assert res.returncode == 0, res.stderr
    summary = pd.read_csv(out / "summary" / "summary.csv")
    assert set(summary.method) == {"No_Removal", "Ours"} and set(summary.n_drops) == {0}
    assert (summary.n_trials == 1).all()
    assert "note: the summary covers this run's trial(s) [0], methods ['Ours'] and -r [0]" in res.stdout
    assert "rerun with those settings to summarise them" in res.stdout


# ---------------------------------------------------------------- 16: divergence whatever the loss's size
def test_a_diverged_logistic_regression_is_stopped(tmp_path):
    out = tmp_path / "o"
    exit2(run_cli("-o", str(out), *FAST, "-lr", "1e30"), "the training diverged: its loss became",
          "lower the learning rate (-lr)")
    assert not (out / "influence").exists()


# ---------------------------------------------------------------- API: 5, 6, 7, 15
def relu_net(x, train):  # two_layer_tanh's parameters, another function: another network
    with nn.parameter_scope("hidden"):
        h = F.relu(PF.affine(x, 32))
    with nn.parameter_scope("out"):
        return PF.affine(h, 10)


def cleanser(out, network=two_layer_tanh, **kw):
    train, val, test = digits_arrays(60, 30, 30)
    return Cleanser(REGISTRY, network, train, val, test, out=str(out), name="net", **{"epochs": 1, **kw})


def one_line(exc_info, *fragments):
    text = str(exc_info.value)
    assert "\n" not in text
    for f in fragments:
        assert f in text, text


def test_api_a_changed_network_under_the_same_name_is_a_changed_input(tmp_path):
    cleanser(tmp_path / "o").influence("Ours")
    before = tree(tmp_path / "o")
    with pytest.raises(UserError) as e:
        cleanser(tmp_path / "o", relu_net).influence("Ours")
    one_line(e, "holds a run with other settings (model_fingerprint", "--overwrite")
    assert tree(tmp_path / "o") == before


def test_api_retrain_without_checks_n(tmp_path):
    c = cleanser(tmp_path / "o")
    c.influence("Ours")
    before = tree(tmp_path / "o")
    for n in (-3, 60, 61, 2.5):
        with pytest.raises(UserError) as e:
            c.retrain_without("Ours", n)
        one_line(e, "retrain_without: n must be an integer with 0 <= n < 60 (the training size)")
    assert tree(tmp_path / "o") == before


@pytest.mark.parametrize("setting,message", [
    ({"epochs": 0}, "epochs (-e) must be a positive integer, got 0"),
    ({"lr": float("nan")}, "learning rate (-lr) must be a positive finite number, got nan"),
    ({"batch_size": 0}, "batch size (-bs) must be a positive integer, got 0"),
])
def test_api_settings_are_checked_as_on_the_command_line(tmp_path, setting, message):
    with pytest.raises(UserError) as e:
        cleanser(tmp_path / "o", **setting).train()
    one_line(e, message)
    assert not (tmp_path / "o").exists()


def test_api_a_network_that_raises_leaves_nothing(tmp_path):
    def broken(x, train):
        raise ValueError("my bug")
    with pytest.raises(ValueError, match="my bug"):
        cleanser(tmp_path / "o", broken).train()
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())

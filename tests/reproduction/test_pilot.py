"""Issue 32's pilot: the settled-size choice on fake train logs, against hand values."""
import json

import numpy as np
import pandas as pd
import pytest

from reproduction.pilot import choose_size, load_pilot, size_row, val_range, write_pilot
from reproduction.scales import PILOT_MAX_RANGE, PILOT_MAX_SD, SCALES


def log(last3, epochs=20):
    """A train log whose validation accuracy ends with ``last3`` (earlier epochs far lower)."""
    acc = list(np.linspace(0.5, 0.9, epochs - 3)) + list(last3)
    return pd.DataFrame({"epoch": range(1, epochs + 1), "val_accuracy": acc})


def test_the_criterion_is_the_issues():
    assert (PILOT_MAX_RANGE, PILOT_MAX_SD) == (0.005, 0.003)
    pilot = SCALES["pilot"]
    assert [e.n_train for e in pilot.experiments] == [5000, 10000, 20000]
    assert all(e.trials == 3 and e.n_val == 10000 and e.n_test is None and e.batch_size == 32 and e.lr == 0.05
               and e.epochs == 20 for e in pilot.experiments)


def test_val_range_is_max_minus_min_of_the_last_three_epochs():
    assert val_range(log([0.97, 0.975, 0.972])) == pytest.approx(0.005)
    shuffled = log([0.97, 0.975, 0.972]).sample(frac=1, random_state=0)  # row order does not matter
    assert val_range(shuffled) == pytest.approx(0.005)


def test_size_rows_and_the_choice_by_hand():
    # 5,000: ranges 0.4, 0.9, 0.2 pp -> median 0.4 pp; test accuracy 97.0, 97.5, 97.2 -> sd 0.252 pp: settled
    logs = {0: log([0.970, 0.972, 0.974]), 1: log([0.970, 0.979, 0.975]), 2: log([0.971, 0.973, 0.972])}
    row = size_row(5000, 32, logs, {0: 0.970, 1: 0.975, 2: 0.972})
    assert row["steps_per_epoch"] == 157 and row["seeds"] == 3
    assert row["median_val_range_pp"] == pytest.approx(0.4)
    assert row["mean_val_range_pp"] == pytest.approx(0.5)
    assert row["test_accuracy_mean_pct"] == pytest.approx(97.2333333)
    assert row["test_accuracy_sd_pp"] == pytest.approx(0.2516611)
    assert row["settled"]
    # the same logs with a spread accuracy (sd 0.5 pp) are not settled
    spread = size_row(5000, 32, logs, {0: 0.970, 1: 0.980, 2: 0.975})
    assert spread["test_accuracy_sd_pp"] == pytest.approx(0.5) and not spread["settled"]
    table = pd.DataFrame([spread, size_row(10000, 32, logs, {0: 0.970, 1: 0.975, 2: 0.972}),
                          size_row(20000, 32, logs, {0: 0.971, 1: 0.972, 2: 0.973})])
    assert choose_size(table) == 10000  # the smallest settled size
    # none settled: the closest, max(median range / 0.5, sd / 0.3): 5,000 -> 1.667, 20,000 -> 1.2
    wide = {s: log([0.96, 0.966, 0.963]) for s in range(3)}  # range 0.6 pp
    none = pd.DataFrame([spread, size_row(20000, 32, wide, {0: 0.971, 1: 0.972, 2: 0.973})])
    assert not none.settled.any() and choose_size(none) == 20000
    # a size without all its seeds is not chosen yet
    assert choose_size(table.assign(seeds=[3, 2, 2])) is None


def fake_pilot(root, accuracies=([0.970, 0.980, 0.975], [0.970, 0.975, 0.972], [0.98, 0.981])):
    """Committed pilot runs under ``root``: per size, one trial per accuracy, each with the validation
    accuracy ending 0.970, 0.972, 0.974 (range 0.4 pp)."""
    pilot = SCALES["pilot"]
    for exp, accs in zip(pilot.experiments, accuracies):
        folder = root / "runs" / exp.name
        for seed, acc in enumerate(accs):
            (folder / "trials").mkdir(parents=True, exist_ok=True)
            (folder / "trials" / f"seed_{seed}.json").write_text(json.dumps({"seed": seed, "compute_s": 450.0}))
            (folder / "train_log").mkdir(exist_ok=True)
            log([0.970, 0.972, 0.974]).to_csv(folder / "train_log" / f"train_log_seed_{seed}.csv", index=False)
            (folder / "score" / "No_Removal").mkdir(parents=True, exist_ok=True)
            pd.DataFrame([{"val_loss": 0.1, "test_loss": 0.1, "val_accuracy": 0.97, "test_accuracy": acc}]).to_csv(
                folder / "score" / "No_Removal" / f"score_delete_worst_0_seed_{seed}.csv", index=False)
    return pilot


def test_the_table_from_fake_committed_runs(tmp_path):
    pilot = fake_pilot(tmp_path)
    table = load_pilot(pilot, tmp_path)
    assert table.seeds.tolist() == [3, 3, 2] and table.settled.tolist() == [False, True, False]
    text = write_pilot(pilot, tmp_path, "abc1234").read_text()
    assert "**Chosen size:** 10,000." in text and "at abc1234" in text
    assert "| 5,000 | 157 | 3 | 0.40 | 0.40 | 97.50 | 0.50 | no |" in text
    assert "| 20,000 | 625 | 2 | 0.40 | 0.40 | 98.05 | 0.07 | - |" in text  # two of three seeds: not judged yet
    assert "Progress: 8 trials done, 1 remaining, 1.0 core-hours spent" in text  # 8 x 450 s
    assert "| 5,000 | 1 | 0.40 | 97.40 | 98.00 | - |" in text  # each trial: range, final val, test accuracy


def test_the_settled_scale_is_the_pilots_choice_with_the_issues_design():
    from reproduction.runner import committed_root
    from reproduction.scales import SETTLED_N

    table = load_pilot(SCALES["pilot"], committed_root("pilot"))
    # the committed pilot is complete (three seeds a size) and chose SETTLED_N, the smallest settled size
    assert table.seeds.tolist() == [3, 3, 3] and table.settled.tolist() == [False, False, True]
    assert choose_size(table) == SETTLED_N
    settled = SCALES["settled"]
    assert settled.trial_folders
    c1, *c2 = settled.experiments
    n = SETTLED_N
    assert (c1.claim, c1.batch_size, c1.trials, c1.n_train, c1.n_val, c1.n_test) == (1, 32, 10, n, 10000, None)
    assert c1.remove == (0, n // 100, n // 20, n // 10, n // 5) and c1.primary_n == n // 10
    assert c1.methods == ("Hara", "Ours", "Random", "Loss")
    assert [(e.claim, e.batch_size, e.trials, e.remove, e.primary_n) for e in c2] == [
        (2, b, 5, (0, n // 10), n // 10) for b in (64, 128, 256)]
    # the pilot's training settings: a pilot trial's training is the claim-1 trial's of the same seed
    pilot = SCALES["pilot"].experiments[-1]
    keys = ("dataset", "n_train", "n_val", "n_test", "batch_size", "lr", "epochs")
    assert [getattr(pilot, k) for k in keys] == [getattr(c1, k) for k in keys]


def test_the_settled_report_shows_the_criterion_and_which_sizes_met_it(tmp_path):
    """The report of a scale chosen by a pilot carries the pilot's criterion, table and choice; while
    the size being chosen lacks seeds, the choice says which."""
    from reproduction.report import build_report
    from reproduction.scales import Scale

    fake_pilot(tmp_path / "pilot", ([0.970, 0.980, 0.975], [0.970, 0.980, 0.975], [0.98, 0.981]))
    settled = Scale("settled", SCALES["settled"].experiments[:1], trial_folders=True, pilot="pilot")
    text = build_report(settled, tmp_path / "settled").read_text()
    assert "Which training sizes met the pilot's criterion" in text
    assert "**Criterion (fixed before any claim runs):**" in text
    assert "| 10,000 | 313 | 3 | 0.40 | 0.40 | 97.50 | 0.50 | no |" in text
    assert "**Chosen size:** not yet: 20,000 has 2 of its 3 seeds, and no smaller size is settled." in text
    assert text.index("## Regime of every experiment") < text.index("Which training sizes") < text.index("## Claim 1")
    fake_pilot(tmp_path / "pilot", ([0.970, 0.980, 0.975], [0.970, 0.980, 0.975], [0.98, 0.981, 0.982]))
    text = build_report(settled, tmp_path / "settled").read_text()
    assert "| 20,000 | 625 | 3 | 0.40 | 0.40 | 98.10 | 0.10 | yes |" in text and "**Chosen size:** 20,000." in text

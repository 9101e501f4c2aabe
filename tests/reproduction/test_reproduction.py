"""The reproduction report from a tiny fake set of committed run folders, against numbers computed by hand.

Fake study: 5 trials (seeds 0-4) of a claim-1 experiment planned for 10, n in {0, 2}. Test accuracy:

    No Removal  0.900 0.910 0.905 0.895 0.920
    Ours  n=2   base + (0.001 0.002 0.003 0.004 0.005)
    Hara  n=2   base + (0.002 0.002 0.002 0.004 0.004)
    Random n=2  base + (-0.002 0.001 0.000 -0.001 0.002)

By hand, Ours - No Removal: d = 0.001..0.005, mean 0.003, s = sqrt(2.5e-6) = 0.00158114,
se = s / sqrt(5) = 0.000707107, t = 4.24264 (t^2 = 18); t_{0.975,4} = 2.776445 (table), so the
interval is 0.003 -+ 0.00196324 = [0.00103676, 0.00496324]. The two-sided p of Student t with 4
degrees of freedom has the closed form F(t) = 1/2 + (3/8) x (1 - x^2 / 12) with x = t / sqrt(1 + t^2/4)
... written out: x = 4.24264 / sqrt(5.5) = 1.809068, x^2 = 3.272727, F = 0.5 + 0.375 * 1.809068 *
0.727273 = 0.993382, p = 2 (1 - F) = 0.013236. Wilcoxon, all five differences positive and distinct:
exact two-sided p = 2 / 2^5 = 0.0625. MDE = (2.776445 + t_{0.80,4} = 0.940965) * se = 0.0026286.
Ours - Random: d = (0.003 0.001 0.003 0.005 0.003), mean 0.003, s = sqrt(8e-6 / 4) = 0.00141421,
interval 0.003 -+ 2.776445 * 0.000632456 = [0.00124402, 0.00475598].
Random - No Removal: mean 0, s = 0.00158114, interval [-0.00196324, +0.00196324].
Ours - Hara: d = (-0.001 0 0.001 0 0.001), mean 0.0002.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from reproduction import stats  # noqa: E402
from reproduction.report import build_report, load_experiment  # noqa: E402
from reproduction.scales import Experiment, Scale  # noqa: E402

BASE = [0.900, 0.910, 0.905, 0.895, 0.920]
DELTAS = {
    "Ours": [0.001, 0.002, 0.003, 0.004, 0.005],
    "Hara": [0.002, 0.002, 0.002, 0.004, 0.004],
    "Random": [-0.002, 0.001, 0.0, -0.001, 0.002],
}
EXP = Experiment(
    "claim1_fake",
    1,
    "sgd",
    dataset="mnist",
    trials=10,
    remove=(0, 2),
    primary_n=2,
    n_train=4,
    n_val=2,
    n_test=5000,
    label="fake MNIST",
)


def _score(path: Path, acc: float, val_loss: float, test_loss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"val_loss,test_loss,val_accuracy,test_accuracy\n{val_loss},{test_loss},0.9,{acc}\n")


def make_fake_runs(root: Path) -> Path:
    """Committed folder ``root/runs/claim1_fake`` in the project's format (hand-written CSVs)."""
    folder = root / "runs" / EXP.name
    for seed, b in enumerate(BASE):
        for m in ("No_Removal", "Ours", "Hara", "Random"):
            _score(folder / "score" / m / f"score_delete_worst_0_seed_{seed}.csv", b, 0.30, 0.35)
        for m, d in DELTAS.items():
            _score(
                folder / "score" / m / f"score_delete_worst_2_seed_{seed}.csv",
                round(b + d[seed], 3),
                0.30 - 0.01 * (seed + 1) if m == "Ours" else 0.30,
                0.35 - 0.001 * seed,
            )
        # influence CSVs, sorted ascending (most harmful first): the first two rows are removed at n = 2
        for m in ("Ours", "Hara", "Random"):
            f = folder / "influence" / m / f"influence_{m.lower()}_{seed}.csv"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(
                "x:image,y:label,influence,datasource_index\n"
                "mnist/train/3,1,-0.5,3\nmnist/train/1,7,-0.2,1\nmnist/train/0,5,0.1,0\nmnist/train/2,4,0.4,2\n"
            )
        t = folder / "trials" / f"seed_{seed}.json"
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_text(json.dumps({"experiment": EXP.name, "seed": seed, "wall_s": 600.0}))
    return folder


def test_paired_difference_by_hand():
    a = np.array(BASE) + np.array(DELTAS["Ours"])
    p = stats.paired_difference(a, BASE)
    assert p.n == 5
    assert p.mean == pytest.approx(0.003, abs=1e-12)
    assert p.sd == pytest.approx(0.0015811388, rel=1e-7)
    assert p.ci_low == pytest.approx(0.00103676, rel=1e-5)
    assert p.ci_high == pytest.approx(0.00496324, rel=1e-5)
    assert p.p_t == pytest.approx(0.013236, rel=1e-4)
    assert p.p_wilcoxon == pytest.approx(0.0625, rel=1e-9)
    assert p.mde == pytest.approx(0.0026286, rel=1e-4)
    one = stats.paired_difference([1.0], [0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.ci_low)
    zero = stats.paired_difference([1.0, 2.0], [1.0, 2.0])
    assert zero.mean == 0 and zero.p_t == 1.0 and math.isnan(zero.p_wilcoxon)


def test_trials_needed_by_hand():
    assert stats.trials_needed(0.004, 0.002) == 34  # see test_verdict_rules for the t quantiles
    assert stats.trials_needed(0.0, 0.002) == 2
    assert math.isnan(stats.trials_needed(math.nan, 0.002))
    assert math.isinf(stats.trials_needed(1.0, 0.002, most=1000))


def test_tables_and_report_from_fake_runs(tmp_path):
    make_fake_runs(tmp_path)
    data = load_experiment(EXP, tmp_path / "runs" / EXP.name)
    assert data.seeds == [0, 1, 2, 3, 4]
    table = stats.comparison_table(data.scores, metrics=("test_accuracy",)).set_index("method")
    ours, rand, hara = table.loc["Ours"], table.loc["Random"], table.loc["Hara"]
    assert ours.trials == 5
    assert ours["mean"] == pytest.approx(np.mean(BASE) + 0.003, abs=1e-12)  # 0.909
    assert ours["mean"] == pytest.approx(0.909, abs=1e-12)
    assert ours["sd"] == pytest.approx(np.std(np.array(BASE) + DELTAS["Ours"], ddof=1), rel=1e-9)
    assert ours.base_mean == pytest.approx(0.003, abs=1e-12)
    assert (ours.base_ci_low, ours.base_ci_high) == (
        pytest.approx(0.00103676, rel=1e-5),
        pytest.approx(0.00496324, rel=1e-5),
    )
    assert ours.base_p_wilcoxon == pytest.approx(0.0625)
    assert ours.rand_mean == pytest.approx(0.003, abs=1e-12)
    assert ours.rand_sd == pytest.approx(0.00141421356, rel=1e-7)
    assert (ours.rand_ci_low, ours.rand_ci_high) == (
        pytest.approx(0.00124402, rel=1e-5),
        pytest.approx(0.00475598, rel=1e-5),
    )
    assert ours.pair_mean == pytest.approx(0.0002, abs=1e-12)
    assert rand.base_mean == pytest.approx(0.0, abs=1e-12)
    assert (rand.base_ci_low, rand.base_ci_high) == (
        pytest.approx(-0.00196324, rel=1e-5),
        pytest.approx(0.00196324, rel=1e-5),
    )
    assert math.isnan(rand.rand_mean) and math.isnan(hara.pair_mean)

    # claim 5: Ours removed indices 3 and 1 -> predicted -0.5 + -0.2 = -0.7; actual = -0.01 (seed + 1)
    pairs = stats.predicted_vs_actual(data.scores, data.influence, {"Ours": "Ours", "Random": "Ours"})
    ours5 = pairs[pairs.method == "Ours"].sort_values("seed")
    assert list(ours5.predicted) == pytest.approx([-0.7] * 5)
    assert list(ours5.actual) == pytest.approx([-0.01, -0.02, -0.03, -0.04, -0.05])
    assert list(pairs[pairs.method == "Random"].actual) == pytest.approx([0.0] * 5)

    # the verdict: gain and margin over Random above 0 -> reproduced
    scale = Scale("fake", (EXP,))
    index = build_report(scale, tmp_path, commit="abc1234")
    text = index.read_text()
    assert "**partial: 5 of 10 trials**" in text
    assert "| 1 (fake MNIST) | **reproduced** |" in text
    assert "+0.30 [+0.10, +0.50]" in text  # Ours - No Removal, pp
    assert "+0.30 [+0.12, +0.48]" in text  # Ours - Random, pp
    assert "+0.00 [-0.20, +0.20]" in text  # Random - No Removal, pp
    assert "0.0132 / 0.0625" in text  # p (t / Wilcoxon)
    # Random n = 2: 0.898 0.911 0.905 0.894 0.922, mean 0.906, deviations -8 5 -1 -12 16 (1e-3),
    # s = sqrt(490e-6 / 4) = 0.011068
    assert "| 2 | Random | 5 | 90.60 +- 1.11 |" in text
    assert (tmp_path / "report" / "fig" / "claim1_claim1_fake.png").is_file()
    assert (tmp_path / "report" / "fig" / "claim5_prediction.png").is_file()
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<td>+0.30 [+0.10, +0.50]</td>" in page and "<img src='fig/claim5_prediction.png'" in page


def test_verdict_rules():
    P = stats.Paired
    wide = P(10, 0.001, 0.004, -0.0019, 0.0039, 0.4, 0.4, 0.0040)
    none = P(10, 0.0, 0.001, -0.0007, 0.0007, 0.9, 0.9, 0.001)
    up = P(10, 0.004, 0.002, 0.0026, 0.0054, 0.001, 0.002, 0.002)
    assert stats.gain_verdict(up, up, none, None, 0.002).label == stats.REPRODUCED
    assert stats.gain_verdict(none, none, none, None, 0.002).label == stats.NOT_REPRODUCED
    assert stats.gain_verdict(wide, wide, none, None, 0.002).label == stats.INCONCLUSIVE
    assert stats.gain_verdict(wide, wide, none, None, 0.002).reason.startswith("the gain's interval holds both 0")
    mixed = stats.gain_verdict(up, wide, none, None, 0.002)  # the gain is shown, the margin over Random is not
    assert mixed.label == stats.INCONCLUSIVE and mixed.reason.startswith("accuracy rises")
    assert "margin over Random holds both 0 and 0.20 pp" in mixed.reason
    # sd 0.4 pp, delta 0.2 pp: MDE(m) = (t_0.975,m-1 + t_0.80,m-1) * 0.004 / sqrt(m) is
    # (2.0369 + 0.8531) * 0.004 / sqrt(33) = 0.002012 at m = 33 and (2.0345 + 0.8530) * 0.004 / sqrt(34) = 0.001981
    assert mixed.reason.endswith(
        "resolving 0.20 pp of Ours - Random at its observed spread (sd 0.40 pp) takes 34 trials"
    )
    assert stats.gain_verdict(wide, wide, none, None, 0.002).reason.endswith(
        "resolving 0.20 pp of Ours - No Removal at its observed spread (sd 0.40 pp) takes 34 trials"
    )
    assert stats.parity_text(none, 0.002).startswith("equivalent")


def test_copy_trial_keeps_small_files_only(tmp_path):
    """The committed copy of a trial: influence, score, timing and train-log files and the marker
    (with compute_s = the sum of the stage timings); never weights or another seed's files."""
    from reproduction.runner import copy_trial, trial_done

    runs, committed = tmp_path / "runs", tmp_path / "committed"
    src = runs / EXP.name
    (src / "weights" / "seed_03" / "hara").mkdir(parents=True)
    for f in ("initial.h5", "final.h5", "hara/step_000001.h5"):
        (src / "weights" / "seed_03" / f).write_bytes(b"\0" * 10)
    (src / "weights" / "seed_03" / "train_log.csv").write_text("epoch,seconds\n1,2.0\n")
    (src / "manifest.json").write_text("{}")
    (src / "logs").mkdir()
    (src / "logs" / "timings_seed_3.csv").write_text("stage,method,seed,seconds\ntrain,,3,100.5\ninfl,Ours,3,20.0\n")
    for seed in (3, 4):
        _score(src / "score" / "Ours" / f"score_delete_worst_2_seed_{seed}.csv", 0.9, 0.3, 0.3)
        f = src / "influence" / "Ours" / f"influence_ours_{seed}.csv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x:image,y:label,influence,datasource_index\n")
    assert not trial_done(committed, EXP, 3)
    written = copy_trial(EXP, runs, committed, 3, wall_s=7.0)
    dst = committed / "runs" / EXP.name
    names = sorted(str(p.relative_to(dst)) for p in written)
    assert names == [
        "influence/Ours/influence_ours_3.csv",
        "logs/timings_seed_3.csv",
        "manifest.json",
        "score/Ours/score_delete_worst_2_seed_3.csv",
        "train_log/train_log_seed_3.csv",
        "trials/seed_3.json",
    ]
    assert not list(dst.rglob("*.h5"))
    marker = json.loads((dst / "trials" / "seed_3.json").read_text())
    assert marker["wall_s"] == 7.0 and marker["compute_s"] == 120.5 and "cpu_s" not in marker
    assert trial_done(committed, EXP, 3)
    copy_trial(EXP, runs, committed, 3, wall_s=7.0, cpu_s=5.04, training_from={"experiment": "pilot", "seed": 3},
               commit="abc1234")
    marker = json.loads((dst / "trials" / "seed_3.json").read_text())
    assert marker["cpu_s"] == 5.0 and marker["training_from"] == {"experiment": "pilot", "seed": 3}
    assert marker["commit"] == "abc1234"  # the code the process started with, not the checkout's now


def test_run_scale_runs_missing_trials_of_the_given_seeds_only(tmp_path, monkeypatch):
    """``--seeds`` splits one experiment between processes: only the listed seeds that have no
    marker yet are run, in ascending order, and each is copied after it runs."""
    from reproduction import runner

    ran, copied = [], []
    monkeypatch.setattr(runner, "committed_root", lambda name: tmp_path / "committed")
    monkeypatch.setattr(runner, "run_config", lambda exp, runs, seed, data_dir, out: seed)
    monkeypatch.setattr(runner, "run", lambda cfg, registry: ran.append(cfg))
    monkeypatch.setattr(runner, "copy_trial",
                        lambda exp, runs, committed, seed, wall, src, **kw: copied.append(seed) or [seed])
    commits = []
    monkeypatch.setattr(runner, "git_commit", lambda files, message: commits.append(files) or True)
    marker = tmp_path / "committed" / "runs" / EXP.name / "trials" / "seed_3.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    scale = Scale("fake", (EXP,))
    n = runner.run_scale(scale, tmp_path / "runs", None, seeds=[7, 3, 1, 12], log=lambda s: None)
    assert (n, ran, copied) == (2, [1, 7], [1, 7])
    assert commits == []  # without commit=True nothing is git-committed
    ran.clear()
    assert runner.run_scale(scale, tmp_path / "runs", None, commit=True, max_trials=4, log=lambda s: None) == 4
    assert ran == [0, 1, 2, 4] and commits == [[0], [1], [2], [4]]


def test_git_commit_of_no_paths_commits_nothing(monkeypatch):
    """``git commit --`` without a path would commit whatever is staged: no paths, no git call."""
    from reproduction import runner

    monkeypatch.setattr(runner.subprocess, "run", lambda *a, **k: pytest.fail(f"git called: {a}"))
    assert runner.git_commit([], "nothing") is False


def test_two_processes_share_a_scale_through_trial_claims(tmp_path, monkeypatch):
    """A trial another process holds (its claim locked) is skipped; with ``trial_folders`` each trial
    runs in ``<runs>/<experiment>/seed_<k>`` (the pilot, issue 32)."""
    from reproduction import runner

    outs = []
    monkeypatch.setattr(runner, "committed_root", lambda name: tmp_path / "committed")
    monkeypatch.setattr(runner, "run_config", lambda exp, runs, seed, data_dir, out: outs.append(out) or seed)
    monkeypatch.setattr(runner, "run", lambda cfg, registry: None)
    monkeypatch.setattr(runner, "copy_trial", lambda exp, runs, committed, seed, wall, src, **kw: [])
    scale = Scale("fake", (EXP,), trial_folders=True)
    runs = tmp_path / "runs"
    with runner.TrialClaim(runs, EXP, 0) as claim:  # "another process" runs seed 0
        assert claim.mine
        assert runner.run_scale(scale, runs, None, max_trials=2, log=lambda s: None) == 2
    assert outs == [runs / EXP.name / "seed_1", runs / EXP.name / "seed_2"]
    assert (runs / ".claims" / f"{EXP.name}_seed_0").is_file()


def test_a_resumed_trials_wall_time_counts_its_interrupted_calls(tmp_path, monkeypatch):
    """Issue 32: the marker's ``wall_s`` is the sum over the trial's calls, an interrupted one included."""
    from reproduction import runner

    walls, clock = [], iter([0.0, 100.0, 1000.0, 1250.0])  # call 1: 100 s, interrupted; call 2: 250 s
    monkeypatch.setattr(runner.time, "time", lambda: next(clock))
    monkeypatch.setattr(runner, "committed_root", lambda name: tmp_path / "committed")
    monkeypatch.setattr(runner, "run_config", lambda exp, runs, seed, data_dir, out: seed)
    calls = []

    def run(cfg, registry):
        calls.append(cfg)
        if len(calls) == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(runner, "run", run)
    monkeypatch.setattr(runner, "copy_trial",
                        lambda exp, runs, committed, seed, wall, src, **kw: walls.append(wall) or [])
    scale = Scale("fake", (EXP,))
    with pytest.raises(KeyboardInterrupt):
        runner.run_scale(scale, tmp_path / "runs", None, max_trials=1, log=lambda s: None)
    assert runner.run_scale(scale, tmp_path / "runs", None, max_trials=1, log=lambda s: None) == 1
    assert walls == [350.0]


def test_regime_table_and_each_trials_differences_by_hand(tmp_path):
    """Issue 32: the regime row of the fake study against hand values (module docstring): No_Removal
    mean 0.906, sd sqrt(370e-6 / 4) = 0.0096177; noise floor = sd of Random - No_Removal = 0.00158114;
    validation ranges 0, 1, 2, 3, 4 pp over the last 3 epochs -> mean and median 2 pp; and each trial's
    differences, so that one outlying trial is visible."""
    import pandas as pd

    from reproduction.report import regime_row, regime_table, trial_differences
    folder = make_fake_runs(tmp_path)
    for seed in range(5):
        log = folder / "train_log" / f"train_log_seed_{seed}.csv"
        log.parent.mkdir(exist_ok=True)
        accuracy = [0.5, 0.9, 0.9 + 0.01 * seed, 0.9]
        pd.DataFrame({"epoch": [1, 2, 3, 4], "val_accuracy": accuracy}).to_csv(log, index=False)
    data = load_experiment(EXP, folder)
    r = regime_row(data)
    assert (r["n_train"], r["steps_per_epoch"], r["trials"]) == (4, 1, 5)
    assert r["no_removal_mean"] == pytest.approx(0.906, abs=1e-12)
    assert r["no_removal_sd"] == pytest.approx(0.0096176920, rel=1e-7)
    assert r["noise_floor_sd"] == pytest.approx(0.0015811388, rel=1e-7)
    assert r["val_range_mean"] == pytest.approx(0.02) and r["val_range_median"] == pytest.approx(0.02)
    assert regime_table([data])[2] == "| fake MNIST | 4 | 1 | 5 | 90.60 +- 0.96 | 2.0 / 2.0 | 0.16 |"
    rows = trial_differences(data, 2)
    assert rows[0] == "| seed | Ours - No_Removal (pp) | Hara - No_Removal (pp) | Random - No_Removal (pp) |"
    assert rows[2:] == ["| 0 | +0.10 | +0.20 | -0.20 |", "| 1 | +0.20 | +0.20 | +0.10 |",
                        "| 2 | +0.30 | +0.20 | +0.00 |", "| 3 | +0.40 | +0.40 | -0.10 |",
                        "| 4 | +0.50 | +0.40 | +0.20 |"]
    index = build_report(Scale("fake", (EXP,)), tmp_path).read_text()
    assert "## Regime of every experiment" in index and "| fake MNIST | 4 | 1 | 5 | 90.60 +- 0.96 |" in index
    assert "Each trial at n = 2:" in index and "| 4 | +0.50 | +0.40 | +0.20 |" in index
    assert "Code of the trials (the commit in each trial's marker" in index and "not recorded (5 trials)" in index


def test_clustered_correlation_resamples_whole_trials():
    """Two trials of three pairs each. Trial 0 lies on y = x, trial 1 on y = 2 x: a draw of trial 0
    alone has slope 1, of trial 1 alone slope 2, of both (any copies) a slope between; so the interval
    lies within [1, 2] and reaches both ends (with 2 trials, 1/4 of the draws take one trial twice).
    A bootstrap over pairs would mix the trials inside a draw and rarely reach either end."""
    x = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    y = [1.0, 2.0, 3.0, 2.0, 4.0, 6.0]
    c = stats.clustered_correlation(x, y, [0, 0, 0, 1, 1, 1], boot=400)
    assert c["n"] == 6 and c["clusters"] == 2
    assert c["slope"] == pytest.approx(1.5)  # least squares over both: sum xy / ... by hand: cov 1.0 / var 0.667
    assert c["slope_low"] == pytest.approx(1.0) and c["slope_high"] == pytest.approx(2.0)
    # Spearman: 1 within either trial alone (the draws of one trial), below 1 for both together
    assert c["spearman_high"] == pytest.approx(1.0) and c["spearman_low"] == pytest.approx(c["spearman"])
    assert c["spearman"] < 1.0
    one = stats.clustered_correlation(x, y, [0] * 6)  # one trial: no interval
    assert one["clusters"] == 1 and math.isnan(one["slope_low"]) and one["slope"] == pytest.approx(1.5)
    # seeded: the same draws give the same interval
    assert stats.clustered_correlation(x, y, [0, 0, 0, 1, 1, 1], boot=400) == c


def test_loss_beside_influence_and_claim5_per_experiment(tmp_path):
    """The fake study with Loss: Loss - No Removal by seed (+0.1 +0.1 +0.1 +0.1 +0.6 pp), so Ours - Loss
    = (0, +0.1, +0.2, +0.3, -0.1) pp, mean +0.10, sd 0.158 pp, interval +-2.776 x 0.0707 = +-0.20; Hara - Loss
    = (+0.1, +0.1, +0.1, +0.3, -0.2) pp, mean +0.08; Loss - No Removal mean +0.20; claim 5 gets its own
    verdict row per experiment, Loss's sets predicted by Ours (indices 0 and 2 removed: 0.1 + 0.4 = +0.5)."""
    folder = make_fake_runs(tmp_path)
    loss_delta = [0.001, 0.001, 0.001, 0.001, 0.006]
    for seed, b in enumerate(BASE):
        _score(folder / "score" / "Loss" / f"score_delete_worst_0_seed_{seed}.csv", b, 0.30, 0.35)
        _score(folder / "score" / "Loss" / f"score_delete_worst_2_seed_{seed}.csv", round(b + loss_delta[seed], 3),
               0.31, 0.35)
        f = folder / "influence" / "Loss" / f"influence_loss_{seed}.csv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x:image,y:label,influence,datasource_index\n"
                     "mnist/train/0,5,9,0\nmnist/train/2,4,8,2\nmnist/train/3,1,1,3\nmnist/train/1,7,0,1\n")
    data = load_experiment(EXP, folder)
    from reproduction.report import ESTIMATOR_FOR, trial_differences, versus_loss_line

    line = versus_loss_line(data, 2)[0]
    assert "Ours - Loss +0.10 [-0.10, +0.30] pp (p " in line and "Hara - Loss +0.08 [" in line
    assert "Loss - No Removal +0.20 [" in line
    assert trial_differences(data, 2)[0].endswith("| Loss - No_Removal (pp) |")
    assert trial_differences(data, 2)[-1] == "| 4 | +0.50 | +0.40 | +0.20 | +0.60 |"
    pairs = stats.predicted_vs_actual(data.scores, data.influence, ESTIMATOR_FOR)
    loss5 = pairs[pairs.method == "Loss"]
    assert list(loss5.predicted) == pytest.approx([0.5] * 5) and list(loss5.actual) == pytest.approx([0.01] * 5)
    text = build_report(Scale("fake", (EXP,)), tmp_path).read_text()
    assert "| 5 (fake MNIST) | **measured** | Pearson " in text and "pairs from 5 trials |" in text
    # Hara, Ours, Random, Loss at n = 2 in 5 trials; one prediction per method: no correlation, shown as '-'
    assert "| **claim1_fake** | all | all | 20 | 5 | 0.522 [" in text
    assert "| | Loss | all | 5 | 5 | - | - | - | +0.5000 | +0.0100 |" in text
    assert "resamples whole trials" in text and "Against the free ranking by training loss at n = 2" in text


def test_trial_claim_counts_wall_and_cpu_while_a_call_runs(tmp_path):
    """A call killed outright still counts up to its last beat: the totals are on disk during the call."""
    import time

    from reproduction.runner import TrialClaim

    with TrialClaim(tmp_path, EXP, 0, beat=0.05) as claim:
        assert claim.mine and claim.totals() == {"wall_s": 0.0, "cpu_s": 0.0}
        with claim.measure():
            t0 = time.time()
            while time.time() - t0 < 0.4:  # busy: CPU seconds grow with the wall
                pass
            during = json.loads(claim.path.read_text())
            assert during["wall_s"] >= 0.2 and during["cpu_s"] >= 0.1
        first = claim.totals()
        assert 0.4 <= first["wall_s"] < 2.0 and 0.2 <= first["cpu_s"] <= first["wall_s"] + 0.1
        with claim.measure():
            time.sleep(0.2)  # idle: wall grows, CPU hardly
        second = claim.totals()
        assert second["wall_s"] >= first["wall_s"] + 0.15 and second["cpu_s"] < first["cpu_s"] + 0.1
    claim.path.write_text("350.0\n")  # the format of before: one number, the wall seconds
    with TrialClaim(tmp_path, EXP, 0) as claim:
        assert claim.totals() == {"wall_s": 350.0, "cpu_s": 0.0}


def test_a_trial_starts_from_a_finished_training_of_the_same_settings_only(tmp_path, monkeypatch):
    """``--reuse-training``: the pilot's trial of the same seed and manifest is copied (lock left out)
    and its committed marker named; another seed, another manifest, an unfinished training or a trial
    that has begun already are left alone."""
    from reproduction import runner

    manifest = {"dataset": "mnist", "n_train": 20000, "seed_note": [1, 2]}
    src = tmp_path / "pilot_runs" / "pilot_n20000" / "seed_1"
    (src / "weights" / "seed_01").mkdir(parents=True)
    (src / "weights" / "seed_01" / "final.h5").write_bytes(b"w")
    (src / "weights" / "seed_01" / "train_log.csv").write_text("epoch\n1\n")
    (src / "manifest.json").write_text(json.dumps(manifest))
    (src / ".lock").write_text("")
    marker = tmp_path / "repo" / "docs" / "reproduction" / "pilot" / "runs" / "pilot_n20000" / "trials" / "seed_1.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"commit": "032c96c", "wall_s": 8.0, "compute_s": 9.0}))
    monkeypatch.setattr(runner, "REPO", tmp_path / "repo")
    out = tmp_path / "runs" / "claim1" / "seed_1"
    assert runner.reuse_training(out, tmp_path / "pilot_runs", 0, manifest) is None  # no seed 0 there
    assert runner.reuse_training(out, tmp_path / "pilot_runs", 1, {**manifest, "n_train": 10000}) is None
    assert not out.exists()
    origin = runner.reuse_training(out, tmp_path / "pilot_runs", 1, manifest)
    assert origin == {"experiment": "pilot_n20000", "seed": 1, "scale": "pilot", "commit": "032c96c",
                      "wall_s": 8.0, "compute_s": 9.0}
    assert (out / "weights" / "seed_01" / "final.h5").read_bytes() == b"w" and not (out / ".lock").exists()
    assert json.loads((out / runner.TRAINING_FROM).read_text()) == origin
    assert not out.with_name("seed_1.copying").exists()  # copied aside, then renamed into place
    assert runner.reuse_training(out, tmp_path / "pilot_runs", 1, manifest) is None  # begun: never overwritten
    foreign = tmp_path / "runs" / "claim1" / "seed_9" / "seed_1"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")  # a folder holding files the tool did not write is left alone
    assert runner.reuse_training(foreign, tmp_path / "pilot_runs", 1, manifest) is None
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (src / "weights" / "seed_01" / "final.h5").unlink()  # an unfinished training is not taken
    assert runner.reuse_training(tmp_path / "other", tmp_path / "pilot_runs", 1, manifest) is None


def test_the_header_names_cpu_seconds_and_reused_trainings(tmp_path):
    folder = make_fake_runs(tmp_path)
    for seed in (0, 1):  # two trials with the new marker fields: 1,800 + 1,800 CPU s in 3,600 + 3,600 wall s
        info = {"experiment": EXP.name, "seed": seed, "wall_s": 3600.0, "cpu_s": 1800.0}
        if seed == 1:
            info["training_from"] = {"experiment": "pilot_n4", "seed": 1, "scale": "pilot", "commit": "032c96c"}
        (folder / "trials" / f"seed_{seed}.json").write_text(json.dumps(info))
    text = build_report(Scale("fake", (EXP,)), tmp_path).read_text()
    assert " 2 trials record the CPU seconds of their own calls (interrupted calls included, up to their last " \
           "minute): 1.00 CPU-hours in 2.00 wall hours." in text
    assert " 1 trial started from the finished training of the pilot trial with the same settings and seed " \
           "(`--reuse-training`; training code at 032c96c)" in text

"""A new estimator plugs into the pipeline from outside: defined here, registered, run by a driver
with its own option flag, written into the usual tree, and recorded in the manifest."""
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

import eval_sgd_influence
from cleansing.cli import run_main
from cleansing.estimator import Estimate, Estimator, Options, option
from cleansing.trial import Trial, trial_context
from datasets import to_network_input
from estimators import REGISTRY


@dataclass(frozen=True)
class LossOptions(Options):
    title = "training loss (test estimator)"

    loss_power: float = option(1.0, "exponent applied to each training loss", type=float)


class NegativeLoss(Estimator):
    """Scores a sample by minus its training loss to the power ``--loss-power``: high-loss samples first."""

    name = "Negative_loss"
    options = LossOptions

    def estimate(self, trial: Trial, options: LossOptions) -> Estimate:
        d = trial.data
        losses, _ = trial.learner.losses_and_predictions(to_network_input(d.train.images, d.mean, d.std),
                                                         d.train.labels)
        scores = -np.power(losses, options.loss_power)
        return Estimate(scores, tables={"negative_loss_stats": pd.DataFrame({"power": [options.loss_power],
                                                                             "mean_loss": [losses.mean()]})})


@pytest.fixture
def registered():
    REGISTRY.register(NegativeLoss())
    try:
        yield
    finally:
        REGISTRY.unregister(NegativeLoss.name)


ARGS = ["-ds", "digits", "-m", "logreg", "-e", "1", "--n-train", "120", "--n-val", "40", "--n-test", "40", "-r", "0",
        "5", "-j", "1", "--no-progress", "--gallery", "0"]


def test_a_new_estimator_runs_through_a_driver_with_its_own_flag(tmp_path, registered):
    out = tmp_path / "o"
    args = ARGS + ["-o", str(out), "--methods", "Negative_loss", "Random", "--loss-power", "2"]
    assert eval_sgd_influence.main(args) == 0
    infl = pd.read_csv(out / "influence/Negative_loss/influence_negative_loss_0.csv")
    assert list(infl.columns) == ["x:image", "y:label", "influence", "datasource_index"]
    assert len(infl) == 120 and infl.influence.is_monotonic_increasing and (infl.influence <= 0).all()
    stats = pd.read_csv(out / "summary/negative_loss_stats_0.csv")
    assert stats.power.iloc[0] == 2.0
    # the scores are minus the squared training losses of the final model, recomputed here
    trial = trial_context(eval_sgd_influence.DRIVER.config(args, REGISTRY), 0)
    d = trial.data
    losses, _ = trial.learner.losses_and_predictions(to_network_input(d.train.images, d.mean, d.std), d.train.labels)
    np.testing.assert_allclose(infl.sort_values("datasource_index").influence, -losses ** 2, rtol=1e-6)
    assert np.isclose(stats.mean_loss.iloc[0], losses.mean(), rtol=1e-6)
    assert (out / "score/Negative_loss/score_delete_worst_5_seed_0.csv").is_file()
    summary = pd.read_csv(out / "summary/summary.csv")
    assert set(summary.method) == {"Negative_loss", "Random", "No_Removal"}
    import json
    assert json.loads((out / "manifest.json").read_text())["loss_power"] == 2.0
    # another value of its option: refused without --overwrite, and recomputes only its own outputs with it
    random_csv = out / "influence/Random/influence_random_0.csv"
    stamp = random_csv.stat().st_mtime_ns
    assert run_main(eval_sgd_influence.main, args[:-1] + ["3"]) == 2
    assert eval_sgd_influence.main(args[:-1] + ["3", "--overwrite"]) == 0
    assert pd.read_csv(out / "summary/negative_loss_stats_0.csv").power.iloc[0] == 3.0
    assert random_csv.stat().st_mtime_ns == stamp


def test_unknown_methods_and_flags_are_refused_in_one_line(tmp_path, capsys):
    assert run_main(eval_sgd_influence.main, ARGS + ["-o", str(tmp_path / "o"), "--methods", "Negative_loss"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown method(s) Negative_loss; choose from Hara, Ours") and "\n" not in err
    with pytest.raises(SystemExit):
        eval_sgd_influence.main(ARGS + ["-o", str(tmp_path / "o"), "--loss-power", "2"])


def test_every_method_says_what_it_ranks_by_in_the_drivers_help():
    import eval_sgd_influence
    from estimators import REGISTRY
    text = eval_sgd_influence.DRIVER.parser(REGISTRY).format_help()
    listed = text.split("what each ranks by")[1]
    for e in REGISTRY:
        assert e.ranks, f"{e.name} has no ranks text"
        assert f"\n  {e.name}: {e.ranks}" in listed

"""The per-process trial cache: only the trial in use keeps its learner's graphs, and a released
trial computes the same values after it rebuilds them."""
import numpy as np

import eval_sgd_influence
from cleansing.trial import trial_context, validation_loss_grad
from estimators import REGISTRY

ARGS = ["-ds", "digits", "-m", "logreg", "-e", "1", "--n-train", "60", "--n-val", "20", "--n-test", "20", "-r", "0",
        "-nt", "2", "--methods", "Random", "-j", "1", "--no-progress", "--gallery", "0"]


def test_only_the_trial_in_use_keeps_its_graphs(tmp_path):
    args = ARGS + ["-o", str(tmp_path / "o")]
    assert eval_sgd_influence.main(args) == 0
    cfg = eval_sgd_influence.DRIVER.config(args, REGISTRY)
    first = trial_context(cfg, 0)
    u_before = validation_loss_grad(first.learner, first.data)
    assert first.learner._graphs  # the validation gradient's graph is cached
    second = trial_context(cfg, 1)
    validation_loss_grad(second.learner, second.data)
    assert not first.learner._graphs and second.learner._graphs
    again = trial_context(cfg, 0)
    assert again is first and not second.learner._graphs  # cached, not rebuilt; the other released
    u_after = validation_loss_grad(again.learner, again.data)
    assert u_after.keys() == u_before.keys()
    for k in u_before:
        np.testing.assert_array_equal(u_after[k], u_before[k])

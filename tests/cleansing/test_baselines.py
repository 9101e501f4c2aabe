"""The free rankings beside the influence estimators: Random (the control) and Loss."""
import numpy as np
import pandas as pd
import pytest

from cleansing.api import Cleanser
from cleansing.trial import trial_context
from datasets.batches import split_batches
from estimators import REGISTRY
from tests.helpers import digits_arrays, two_layer_tanh


def test_loss_ranks_by_the_final_models_cross_entropy_highest_first(tmp_path):
    train, val, test = digits_arrays(80, 30, 30)
    c = Cleanser(REGISTRY, two_layer_tanh, train, val, test, out=str(tmp_path / "o"), epochs=2, name="loss_net")
    frame = c.influence("Loss")
    trial = trial_context(c.cfg, 0)
    losses = np.concatenate([trial.learner.losses_and_predictions(x, y)[0]
                             for x, y in split_batches(trial.data, trial.data.train)])
    assert list(frame.columns) == ["x:image", "y:label", "influence", "datasource_index"] and len(frame) == 80
    # the influence column is minus each sample's loss, sorted ascending: the highest loss first
    assert np.array_equal(frame.influence.to_numpy(), np.sort(-losses))
    assert np.array_equal(frame.datasource_index.to_numpy()[:5], np.argsort(-losses, kind="stable")[:5])
    assert frame.influence.iloc[0] == -losses.max() and losses.min() >= 0


def test_aum_is_the_mean_margin_the_training_steps_saw(tmp_path):
    """AUM from the margins recorded during training: the first step's rows against numpy on the
    initial logistic-regression parameters and the same augmented batch; AUM = mean over epochs."""
    from cleansing.config import make_config
    from cleansing.paths import RunPaths
    from cleansing.pipeline import run
    from cleansing.trace import load_trace
    from cleansing.train import label_margins, load_margins
    from cleansing.trial import load_trial_data
    from common.params_io import load_params
    from datasets.batches import training_batch
    cfg = make_config(REGISTRY, dataset="digits", model="logreg", epochs=2, n_train=64, n_val=20, n_test=20,
                      out=str(tmp_path / "o"), methods=("AUM",), remove=(0,), gallery=0, show_progress=False)
    run(cfg, REGISTRY)
    paths = RunPaths(cfg.out)
    margins = load_margins(paths.margins(0))
    assert margins.shape == (2, 64) and np.isfinite(margins).all()
    data = load_trial_data(cfg, 0)
    trace = load_trace(paths.trace(0), 64)
    idx, seeds = trace.batch(0)
    x, y = training_batch(data, idx, seeds, True)
    w = load_params(paths.params(0, "initial"))
    logits = x.reshape(len(x), -1).astype(np.float64) @ w["fc/affine/W"] + w["fc/affine/b"]
    assert np.allclose(margins[0, idx], label_margins(logits, np.asarray(y).reshape(-1)), atol=1e-5)
    by_hand = logits[0, y.reshape(-1)[0]] - np.delete(logits[0], y.reshape(-1)[0]).max()
    assert margins[0, idx[0]] == pytest.approx(by_hand, abs=1e-5)
    frame = pd.read_csv(paths.influence_csv("AUM", 0))
    aum = margins.mean(axis=0)
    assert np.allclose(frame.influence.to_numpy(), np.sort(aum)) and frame.datasource_index.iloc[0] == np.argmin(aum)
    assert not (paths.weights(0) / "epochs").exists()  # the epochs' margin files were merged and removed

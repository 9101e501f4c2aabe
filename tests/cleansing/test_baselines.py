"""The free rankings beside the influence estimators: Random (the control) and Loss."""
import numpy as np

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

"""scikit-learn's bundled 8x8 digits (no download): the embedded default for a first run."""
from __future__ import annotations

import numpy as np

from datasets.base import SourceData, index_ids, make_split
from datasets.imageops import to_working_size

N_TEST = 300
N_VAL = 300
TEST_SEED = 0     # the fixed test set never depends on the trial seed


def load(native: bool = False) -> SourceData:
    """1,797 digits at 1x32x32 (values 0..16 scaled to 0..255).

    test = the first 300 of ``np.random.RandomState(0).permutation(1797)`` (that order); pool = the
    other 1,497 (to be split 1,197 + 300 per trial). ids are ``digits/<index in load_digits>``.
    """
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    images = images[:, None] if native else to_working_size(images[:, None])
    everything = make_split(images, bunch.target, index_ids("digits", images.shape[0]))
    order = np.random.RandomState(TEST_SEED).permutation(len(everything))
    return SourceData(everything.subset(order[N_TEST:]), everything.subset(order[:N_TEST]), N_VAL)

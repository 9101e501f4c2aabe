"""Manifests written by older versions: the one home of the rules that read them as today's.

A key recorded since some version is missing from the manifests written before it. Such a key is
completed before the comparison with today's settings (``complete``):

* ``MANIFEST_DEFAULTS`` (core settings) and ``Options.manifest_defaults`` (an estimator family's):
  the value every run of before had;
* ``ADOPTED_IF_MISSING`` (report settings) and the options of the run's estimators: today's value
  (the reports or estimators never ran there with other values).

``KEY_ORDER`` keeps the order of the keys of before in the manifest a run compares (the one-line
list of differences follows it); keys added since follow in ``cleansing.settings.SETTINGS`` order.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping

#: Manifest keys added after runs had been made: an old manifest without them had these values.
MANIFEST_DEFAULTS: Dict[str, Any] = {"label_noise": 0.0, "retrain_all": False, "train_data": None, "val_data": None,
                                     "test_data": None, "model_fingerprint": None, "nnp_weights": False}
#: Report settings added to the manifest later: an old manifest without them takes today's values.
ADOPTED_IF_MISSING = ("gallery", "explain_k", "explain_max", "explain_same_label")
#: The order of the core keys in the manifests of before.
KEY_ORDER = ("dataset", "model", "epochs", "batch_size", "lr", "augment", "n_train", "n_val", "n_test", "label_noise",
             "retrain_all", "gallery", "explain_k", "explain_max", "explain_same_label", "train_data", "val_data",
             "test_data")


def ordered(entries: Mapping[str, Any]) -> Dict[str, Any]:
    """``entries`` with the keys of ``KEY_ORDER`` first, in that order, then the others as given."""
    first = {k: entries[k] for k in KEY_ORDER if k in entries}
    return {**first, **{k: v for k, v in entries.items() if k not in first}}


def manifest_defaults(option_types: Iterable[type]) -> Dict[str, Any]:
    """Values of keys that older manifests lack: the core ones and those of these options classes."""
    out = dict(MANIFEST_DEFAULTS)
    for kind in option_types:
        out.update(kind.manifest_defaults)
    return out


def complete(old: Mapping[str, Any], wanted: Mapping[str, Any], defaults: Mapping[str, Any],
             option_keys: Iterable[str]) -> Dict[str, Any]:
    """The recorded manifest ``old`` with the keys it lacks filled in: ``defaults``
    (``manifest_defaults``), else today's value (``wanted``) for the report settings and the run's
    estimators' options (``option_keys``)."""
    adopted = {k: wanted[k] for k in option_keys if k in wanted}
    reports = {k: wanted[k] for k in ADOPTED_IF_MISSING if k in wanted}
    return {**adopted, **defaults, **reports, **old}

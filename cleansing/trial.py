"""A trained trial as the estimators see it, and the stored artefacts beside its training.

``Trial`` holds the trial's data (label noise applied), the trace of its training, the learner at
the final parameters, and lazily the gradient ``u`` of the mean validation loss there. It is
rebuilt from the output folder in each process (``trial_context`` caches it per process).
"""
from __future__ import annotations

import collections
import dataclasses
import gc
import json
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd

from common.errors import UserError
from common.fileio import atomic_path, write_csv_atomic, write_text_atomic
from common.params_io import load_params, save_params
from datasets import DataBundle, load_dataset
from datasets.batches import split_batches
from datasets.noise import apply_label_noise
from models.autodiff import Learner, Vector
from models.nnp import nnp_image_size

from .config import RunConfig
from .estimator import Artefact, RunSettings, Trained
from .influence_csv import read_influence_csv, scores_by_position
from .paths import RunPaths
from .trace import Trace
from .train import load_training


def validation_loss_grad(learner: Learner, data: DataBundle) -> Vector:
    """``u = grad (1/|V|) sum_{z in V} l(z; theta)`` at the learner's parameters (inference mode)."""
    return learner.mean_loss_grad(split_batches(data, data.val), train=False)


def validation_loss_stats_grad(learner: Learner, data: DataBundle) -> Vector:
    """``dL_val/dr`` for batch norm's running means and variances r (empty without batch norm)."""
    return learner.running_stats_grad(split_batches(data, data.val))


@dataclass
class Trial:
    """What the estimators of one trial may use: the data, the trace and the final model (the last
    two None for an estimator that does not need the training, see ``untrained_trial``)."""

    cfg: RunConfig
    seed: int
    data: DataBundle
    paths: RunPaths
    trace: Optional[Trace]
    learner: Optional[Learner]
    noisy: Optional[np.ndarray] = None          # training positions whose label was flipped (label noise)
    true_labels: Optional[np.ndarray] = None    # training labels before flipping
    _u: Optional[dict] = None
    _u_stats: Optional[dict] = None
    _artefacts: Dict[str, Trained] = field(default_factory=dict)
    _stored_target: bool = True  # False: u is this trial's own (``with_validation``), never the stored file

    @property
    def settings(self) -> RunSettings:
        """The settings an estimator may read (not the whole run configuration ``cfg``)."""
        return RunSettings.of(self.cfg)

    def scores_of(self, method: str) -> np.ndarray:
        """Another method's scores of this trial in training order, read from its influence CSV (for an
        estimator with ``after = (method,)``, which runs after it)."""
        csv = self.paths.influence_csv(method, self.seed)
        if not csv.is_file():
            raise UserError(f"the {method} scores of seed {self.seed} are missing: list {method} before the "
                            f"methods that reuse them in --methods")
        return scores_by_position(read_influence_csv(csv, len(self.data.train)))

    @property
    def u(self) -> dict:
        """Gradient of the mean validation loss at the final parameters (computed once, or read
        from the trial's ``validation_grad.npz``)."""
        if self._u is None:
            self._load_validation_grad()
        if self._u is None:
            self._u = validation_loss_grad(self.learner, self.data)
        return self._u

    @property
    def u_stats(self) -> dict:
        """Its gradient w.r.t. batch norm's running statistics (computed once, or read; empty without)."""
        if self._u_stats is None:
            self._load_validation_grad()
        if self._u_stats is None:
            self._u_stats = validation_loss_stats_grad(self.learner, self.data)
        return self._u_stats

    def with_target(self, u: dict, u_stats: dict) -> Trial:
        """This trial with another target gradient in place of the validation loss's (``u``, and
        ``u_stats`` for the batch-norm statistics): e.g. one test image's loss, to explain it."""
        return dataclasses.replace(self, _u=u, _u_stats=u_stats)

    def with_validation(self, split) -> Trial:
        """This trial with ``split`` as its validation set: every estimator that reads the validation
        loss (through ``u`` or ``data.val``) then explains that set, e.g. one test image (``--lds-targets``)."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, val=split), _u=None, _u_stats=None,
                                   _stored_target=False)

    def _load_validation_grad(self) -> None:
        if not self._stored_target:
            return
        stored = load_validation_grad(self.paths.validation_grad(self.seed))
        if stored is not None:
            self._u, self._u_stats = stored

    def save_validation_grad(self) -> None:
        """Store ``u`` and ``u_stats`` (the ``validation-grad`` task): an estimator in another
        process then reads them instead of recomputing them."""
        save_validation_grad(self.paths.validation_grad(self.seed), self.u, self.u_stats)

    def step_params(self, step: int) -> Dict[str, np.ndarray]:
        """Parameters before global step ``step`` of the last epoch (estimators with ``needs_step_params``)."""
        return load_params(self.paths.step_params(self.seed, step))

    def epoch_params(self, epoch: int, method: str) -> Dict[str, np.ndarray]:
        """Parameters (running statistics included) after epoch ``epoch`` (0: the initial ones, E: the
        final ones), kept by the training for estimators with ``needs_epoch_params``; ``method`` names
        the estimator in the error when this folder's training did not keep them."""
        path = self.paths.after_epoch(self.seed, epoch, self.cfg.train.epochs)
        if not path.is_file():
            raise UserError(f"{method} needs the parameters after epoch {epoch} ({path}); this folder's training "
                            f"did not keep them: train again in a new -o with {method} in --methods")
        return load_params(path)

    def artefact(self, artefact: Artefact) -> Trained:
        """The stored ``artefact`` of this trial (its task ran before the estimator that reads it)."""
        name = artefact.name
        if name not in self._artefacts:
            found = load_artefact(self.paths, self.seed, name, artefact.config(self))
            if found is None:
                raise UserError(f"artefact {name} of seed {self.seed} is missing or was made with other settings; "
                                f"rerun the same command")
            self._artefacts[name] = found
        return self._artefacts[name]


def save_validation_grad(path, u: Vector, u_stats: Vector) -> None:
    """Write ``u`` and ``u_stats`` atomically, each array with its dtype (``u/<name>``, ``stats/<name>``)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{f"u/{k}": np.asarray(v) for k, v in u.items()},
                     **{f"stats/{k}": np.asarray(v) for k, v in u_stats.items()})


def load_validation_grad(path) -> Optional[Tuple[dict, dict]]:
    """``(u, u_stats)`` from ``save_validation_grad``'s file, or None when there is none (an older run
    folder) or it is unreadable: the caller then computes them."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception:  # missing, truncated or foreign: recompute
        return None
    u = {k[2:]: v for k, v in arrays.items() if k.startswith("u/")}
    stats = {k[6:]: v for k, v in arrays.items() if k.startswith("stats/")}
    return (u, stats) if u else None


# ---------------------------------------------------------------------------- data
def load_noisy_trial_data(cfg: RunConfig, seed: int) -> Tuple[DataBundle, np.ndarray, np.ndarray]:
    """(data of trial ``seed`` with ``label_noise`` of its training labels flipped, noisy mask,
    training labels before flipping); validation and test are never flipped."""
    d = cfg.data
    data = load_dataset(d.dataset, seed, data_dir=d.data_dir, n_train=d.n_train, n_val=d.n_val,
                        n_test=d.n_test, val_csv=d.val_csv, test_csv=d.test_csv,
                        image_size=nnp_image_size(cfg.train.model))
    if cfg.train.batch_size > len(data.train):
        raise UserError(f"batch size {cfg.train.batch_size} is larger than the {len(data.train)} training "
                        f"samples; lower -bs")
    true_labels = data.train.labels
    data, noisy = apply_label_noise(data, d.label_noise, seed)
    return data, noisy, true_labels


def load_trial_data(cfg: RunConfig, seed: int) -> DataBundle:
    """The data trial ``seed`` trains on (label noise applied)."""
    return load_noisy_trial_data(cfg, seed)[0]


_TRIALS: collections.OrderedDict = collections.OrderedDict()


def trial_context(cfg: RunConfig, seed: int) -> Trial:
    """The trained trial ``seed`` (data, trace, final learner), built once per process.

    The two trials used last stay cached; only the one in use keeps its learner's graphs, which hold
    gigabytes at the study's sizes (without this a process running trial after trial grew by one
    trial's graphs each time until two were held)."""
    paths = RunPaths(cfg.out)
    final = paths.params(seed, "final")
    key = (repr(cfg), seed, final.stat().st_mtime_ns if final.is_file() else None)
    if key not in _TRIALS:
        data, noisy, true_labels = load_noisy_trial_data(cfg, seed)
        trace, learner = load_training(cfg.train, data, paths, seed)
        _TRIALS[key] = Trial(cfg, seed, data, paths, trace, learner, noisy, true_labels)
        switched = True
        while len(_TRIALS) > 2:
            _TRIALS.popitem(last=False)
    else:
        switched = next(reversed(_TRIALS)) != key
        _TRIALS.move_to_end(key)
    if switched and len(_TRIALS) > 1:  # another trial was in use: release its graphs
        for other, trial in _TRIALS.items():
            if other != key and trial.learner is not None:
                trial.learner.release_graphs()
        # what a released or evicted trial held is not all freed by reference counting: without
        # this collection a process still grew by one trial's graphs at its third trial
        gc.collect()
    return _TRIALS[key]


def untrained_trial(cfg: RunConfig, seed: int) -> Trial:
    """Trial ``seed`` before its training: data and labels, no trace and no learner (for an
    estimator whose ``needs_final_model`` is False)."""
    data, noisy, true_labels = load_noisy_trial_data(cfg, seed)
    return Trial(cfg, seed, data, RunPaths(cfg.out), None, None, noisy, true_labels)


# ---------------------------------------------------------------------------- artefacts
def load_artefact(paths: RunPaths, seed: int, name: str, config: dict) -> Optional[Trained]:
    """The stored artefact, or None when it is incomplete or was made with another ``config``."""
    folder = paths.artefact(seed, name)
    final, log, conf = folder / "final.h5", folder / "loss_log.csv", folder / "config.json"
    if not (final.is_file() and log.is_file() and conf.is_file()):
        return None
    try:
        if json.loads(conf.read_text()) != config:
            return None
    except ValueError:
        return None
    return Trained(load_params(final), config, pd.read_csv(log))


def save_artefact(paths: RunPaths, seed: int, name: str, trained: Trained) -> None:
    """Store an artefact: parameters, config, and its log last (the log marks it complete)."""
    folder = paths.artefact(seed, name)
    save_params(folder / "final.h5", trained.params)
    write_text_atomic(folder / "config.json", json.dumps(trained.config, indent=1))
    write_csv_atomic(folder / "loss_log.csv", trained.log)

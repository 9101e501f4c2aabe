"""The pipeline's turn-over dropout estimators and their options (``cleansing.estimator``).

Each trial trains ``td_networks`` turn-over dropout (TD) networks (artefacts ``turnover``,
``turnover_net1``, ...: tasks of their own, stored by the pipeline; network 0 also gives the
paper's Fig. 2 loss-curve check, ``summary/turnover_loss_curve_<seed>.csv``,
``fig/turnover_loss_curve_<seed>.png`` and ``summary/turnover_check_<seed>.csv``). The estimators
score from them, averaged over the networks; removal is then scored by the *standard* retraining,
without turn-over dropout:

* "Turnover_dropout": mean influence on the validation set (the paper's method);
* "Turnover_dropout_self": minus the self-influence, for finding mislabeled samples;
* "Turnover_dropout_residual": the validation influence less what the instance's mask bits predict.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from cleansing.estimator import (
    Artefact,
    Estimate,
    Estimator,
    Explanation,
    Options,
    Trained,
    option,
    positive_int,
)
from common.errors import UserError
from models import MODELS
from models.nnp import is_nnp_path, nnp_mask_points

from .influence import instance_losses, residual_validation_influence, validation_influence
from .masks import P_KEEP, resolve_layers
from .network import TDLearner
from .report import explain_errors, loss_curve_figure
from .train import loss_check, network_config, network_name, new_td_learner, train_network

NAME = "Turnover_dropout"
SELF_NAME = "Turnover_dropout_self"
RESIDUAL_NAME = "Turnover_dropout_residual"


def mask_points(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


@dataclass(frozen=True)
class TDOptions(Options):
    """``td_layers``: mask points to mask (None = the model's topmost: cnn6 'block3', mlp 'fc1').
    ``td_networks``: TD networks per trial, each with its own masks; the scores are their mean
    (1 = the paper's method; more average out the quality of each instance's random half-mask)."""

    title = "turn-over dropout (Turnover_dropout, Turnover_dropout_self, Turnover_dropout_residual)"
    manifest_defaults = {"td_networks": 1}  # folders of before recorded it only when > 1
    weights_tag = "turnover"

    td_layers: Optional[Tuple[str, ...]] = option(
        None, "mask points where turn-over dropout applies its masks: cnn6 block1 block2 block3, mlp fc1, an .nnp "
              "network the input of its last Affine layer (named as in the file), or "
              "'all' (default: the topmost only, cnn6 block3 = the 128 maps feeding the affine layer)", nargs="+",
        metavar="POINT",
        type=mask_points)
    td_networks: int = option(1, "train R turn-over dropout networks per trial, each with its own masks, and average "
                                 "their scores (R times the TD training; 1 = the paper's method, the default)",
                              type=positive_int, metavar="R")

    def layers(self, run) -> tuple:
        """The resolved mask points (UserError when the model or names do not allow it)."""
        model_cls = MODELS.get(run.model)
        points = model_cls.mask_points if model_cls is not None else ()
        if model_cls is None and is_nnp_path(run.model):
            points = nnp_mask_points(run.model)
        names = tuple(t for s in self.td_layers for t in s.split(",") if t) if self.td_layers else None
        try:
            return resolve_layers(run.model, points, names)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def manifest(self, run) -> dict:
        return {"td_layers": list(self.layers(run)), "td_p": P_KEEP, "td_networks": int(self.td_networks)}

    def check(self, run) -> None:
        self.layers(run)


def _title(trial, layers) -> str:
    return (f"{trial.settings.dataset} / {trial.settings.model}, turn-over dropout on {'+'.join(layers)}, "
            f"seed {trial.seed}")


def _artefact(options: TDOptions, run, network: int) -> Artefact:
    layers = options.layers(run)

    def config(trial) -> dict:
        return network_config(trial.data, trial.trace, trial.seed, layers, P_KEEP, network)

    def train(trial) -> Trained:
        return train_network(trial.settings.train, trial.data, trial.trace, trial.seed, layers, P_KEEP,
                             show_progress=trial.settings.show_progress, network=network)

    def report(trial, trained: Trained):
        td = _network(trial, layers, network, trained)
        check = loss_check(td, trial.data, trial.noisy if trial.settings.label_noise > 0 else None)
        return ({"turnover_loss_curve": trained.log, "turnover_check": check},
                {"turnover_loss_curve": loss_curve_figure(trained.log, _title(trial, layers))})

    if network > 0:
        return Artefact(network_name(network), config, train)
    return Artefact(network_name(network), config, train, report,
                    report_names=(("turnover_loss_curve", "turnover_check"), ("turnover_loss_curve",)))


def _network(trial, layers, network: int, trained: Trained) -> TDLearner:
    td = new_td_learner(trial.settings.train, trial.data, trial.seed, layers, P_KEEP, network)
    td.set_state({k: np.asarray(getattr(v, "d", v)) for k, v in trained.params.items()})
    return td


class _TurnoverDropoutFamily(Estimator):
    """What the turn-over dropout estimators share: their options, the trained networks (artefacts,
    one per ``--td-networks``, shared by every member) and their cost; each member scores them its way."""

    cost_epochs = 1.0  # its networks are artefact tasks of their own
    options = TDOptions

    def artefacts(self, cfg, options: TDOptions) -> List[Artefact]:
        return [_artefact(options, cfg, k) for k in range(max(1, options.td_networks))]

    def networks(self, trial, options: TDOptions) -> List[TDLearner]:
        layers = options.layers(trial.settings)
        return [_network(trial, layers, k, trial.artefact(a))
                for k, a in enumerate(self.artefacts(trial.settings, options))]


class TurnoverDropout(_TurnoverDropoutFamily):
    """Mean influence on the validation set of each training instance (Kobayashi et al., 2020)."""

    name = NAME
    explains_errors = True
    ranks = "turn-over dropout: validation loss of the sub-network without z_j minus with it"

    def estimate(self, trial, options: TDOptions) -> Estimate:
        nets = self.networks(trial, options)
        show = trial.settings.show_progress
        return Estimate(np.mean([validation_influence(net, trial.data, show_progress=show) for net in nets], axis=0))

    def explain(self, trial, options: TDOptions, max_errors: int) -> Explanation:
        return explain_errors(self.networks(trial, options)[0], trial.data, max_errors)


class TurnoverDropoutSelf(_TurnoverDropoutFamily):
    """Minus the self-influence ``I(z_i, z_i) = L(f^{m~(z_i)}, z_i) - L(f^{m(z_i)}, z_i)`` of every
    training instance: how much ``z_i``'s own loss rises without ``z_i`` (Koh & Liang's ranking for
    fixing mislabeled examples, estimated by turn-over dropout). Negated so that, as for every
    method, the lowest score comes first: samples only memorised, not predicted, lead."""

    name = SELF_NAME
    ranks = "turn-over dropout self-influence on z_j's own loss (wrong labels)"
    target_free = True

    def estimate(self, trial, options: TDOptions) -> Estimate:
        idx = np.arange(len(trial.data.train))
        nets = self.networks(trial, options)
        return Estimate(np.mean([np.subtract(*instance_losses(net, trial.data, idx)[:2]) for net in nets], axis=0))


class TurnoverDropoutResidual(_TurnoverDropoutFamily):
    """``Turnover_dropout``'s score less the part its instance's mask bits predict, fitted on fresh
    masks (``residual_validation_influence``); averaged over the networks like the plain score."""

    name = RESIDUAL_NAME
    ranks = "Turnover_dropout minus what z_j's random mask alone predicts (not in the paper)"

    def estimate(self, trial, options: TDOptions) -> Estimate:
        show = trial.settings.show_progress
        return Estimate(np.mean([residual_validation_influence(net, trial.data, show_progress=show)
                                 for net in self.networks(trial, options)], axis=0))


ESTIMATORS = (TurnoverDropout(), TurnoverDropoutSelf(), TurnoverDropoutResidual())

"""The registry of the built-in estimators: the one list every driver and the Python API use.

A new estimator (a ``cleansing.estimator.Estimator`` subclass, with an ``Options`` dataclass for
its flags) becomes available to every driver by ``REGISTRY.register(MyEstimator())``.
"""
from cleansing.baselines import AUM, LeaveOneOut, Loss, Random
from cleansing.estimator import Registry
from influence_functions import ESTIMATORS as INFLUENCE_FUNCTIONS
from sgd_influence import ESTIMATORS as SGD_INFLUENCE
from tracin import ESTIMATORS as TRACIN
from turnover_dropout import ESTIMATORS as TURNOVER_DROPOUT

REGISTRY = Registry([*SGD_INFLUENCE, *INFLUENCE_FUNCTIONS, *TURNOVER_DROPOUT, *TRACIN, Loss(), AUM(), LeaveOneOut(),
                     Random()])

"""The Python API: your own nnabla network and numpy data through the drivers' pipeline.

    from cleansing.api import Cleanser
    from estimators import REGISTRY

    c = Cleanser(REGISTRY, build, train=(x_tr, y_tr), val=(x_va, y_va), test=(x_te, y_te), out="run", epochs=5)
    c.train()                                   # training with the trace (resumable, like every run)
    frame = c.influence("Ours")                 # the influence CSV as a frame, most harmful first
    scores = c.retrain_without("Ours", 50)      # test/validation scores without the 50 most harmful

``build(x, train) -> logits`` is written with nnabla's parametric functions (``models.custom``);
images are uint8 arrays (N, C, H, W) or (N, H, W), labels integers (``datasets.register_arrays``).
Everything runs in this process (one core) and writes the usual output tree under ``out``, so a
second call reuses what the first computed. Hara, Ours and the influence-function estimators work
on any such network through the generic autodiff path; turn-over dropout needs mask points, which
only the networks described in ``models.networks`` have.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from common.errors import UserError
from datasets.loader import register_arrays
from models.custom import register_network

from .config import RunConfig, make_config
from .estimator import Registry
from .graph import Task
from .influence_csv import read_influence_csv
from .paths import RunPaths
from .pipeline import build_graph, run_lifecycle, run_tasks
from .retrain import read_score_csv
from .trial import load_trial_data

Arrays = Tuple[Any, Any]


class Cleanser:
    """One trial (seed ``seed``) of data cleansing on a registered network and in-memory data."""

    def __init__(self, registry: Registry, network: Callable, train: Arrays, val: Arrays, test: Arrays,
                 out: str, epochs: int = 20, batch_size: int = 32, lr: float = 0.05, augment: bool = False,
                 seed: int = 0, name: Optional[str] = None, num_classes: Optional[int] = None):
        """``network``: ``build(x, train) -> logits`` (or the name of a registered model);
        ``name``: what the model and the data are called (default: the function's name)."""
        self.registry = registry
        name = name or getattr(network, "__name__", "network")
        model = network if isinstance(network, str) else register_network(name, network, replace=True).name
        dataset = register_arrays(f"arrays_{name}", train, val, test, num_classes)
        self.cfg: RunConfig = make_config(registry, dataset=dataset, model=model, epochs=epochs,
                                          batch_size=batch_size, lr=lr, augment=augment, out=str(out), methods=(),
                                          remove=(), first_seed=seed, n_trials=1, jobs=1, show_progress=False,
                                          gallery=0)
        self.seed = seed
        self.paths = RunPaths(out)

    def _run(self, methods: Sequence[str], remove: Iterable[int], wanted: Callable[[Task], bool],
             **options: Any) -> RunConfig:
        cfg = self.cfg.updated(self.registry, methods=tuple(dict.fromkeys([*self.cfg.methods, *methods])),
                               remove=tuple(sorted({*self.cfg.removal.remove, *remove})), **options)
        with run_lifecycle(cfg, self.registry, log=lambda *_: None) as (plan, folder):
            tasks = build_graph(plan, [self.seed])
            run_tasks(plan, folder, _closure(tasks, [t.key for t in tasks if wanted(t)]))
        self.cfg = cfg
        return cfg

    def train(self) -> pd.DataFrame:
        """Train with the recorded trace (once); returns the per-epoch training log."""
        self._run((), (), lambda t: t.key == f"train-{self.seed}")
        return pd.read_csv(self.paths.train_log(self.seed))

    def influence(self, method: str, **options: Any) -> pd.DataFrame:
        """Estimator ``method``'s influence of every training sample on the mean validation loss,
        in the CSV's format and order (``x:image``, ``y:label``, ``influence``, ``datasource_index``;
        most harmful first). ``options``: the estimator's option fields (e.g. ``damping=0.01``)."""
        self._run((method,), (), lambda t: t.key == f"estimate-{self.seed}-{method}", **options)
        n_train = len(load_trial_data(self.cfg, self.seed).train)
        return read_influence_csv(self.paths.influence_csv(method, self.seed), n_train)

    def retrain_without(self, method: str, n: int) -> pd.DataFrame:
        """Retrain (as the run's ``-r``: the last epoch, same order and seeds) without the ``n`` most
        harmful training samples by ``method`` (``0 <= n <`` the training size); returns the
        validation and test scores."""
        n_train = len(load_trial_data(self.cfg, self.seed).train)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n < n_train:
            raise UserError(f"retrain_without: n must be an integer with 0 <= n < {n_train} (the training "
                            f"size), got {n!r}")
        self._run((method,), (0, n), lambda t: t.key == f"retrain-{self.seed}-{method}-{n}")
        return read_score_csv(self.paths.score_csv(method, n, self.seed))


def _closure(tasks: List[Task], keys: List[str]) -> List[Task]:
    """The tasks named in ``keys`` and everything they depend on, in graph order."""
    by_key = {t.key: t for t in tasks}
    need, stack = set(), list(keys)
    while stack:
        k = stack.pop()
        if k not in need:
            need.add(k)
            stack.extend(by_key[k].deps)
    return [t for t in tasks if t.key in need]

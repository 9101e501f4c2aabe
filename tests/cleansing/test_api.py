"""The Python API on a network the project has never seen, checked against the built-in path."""
import textwrap

import nnabla as nn
import nnabla.initializer as I
import nnabla.parametric_functions as PF
import numpy as np
import pandas as pd
import pytest

import eval_sgd_influence
from cleansing.api import Cleanser
from estimators import REGISTRY
from tests.helpers import ROOT, digits_arrays, two_layer_tanh


def user_logreg(x, train):
    """The built-in logreg written by a user: same layer names, initialisers drawn from the seed."""
    with nn.parameter_scope("fc"):
        return PF.affine(x, 10, w_init=I.NormalInitializer(0.01), b_init=I.ConstantInitializer(0.0))


def readme_example() -> str:
    """The README's API example: the indented block that starts with its nnabla import."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("    import nnabla as nn, nnabla.functions as F, nnabla.parametric_functions as PF")
    end = next(i for i in range(start, len(lines)) if lines[i] and not lines[i].startswith("    "))
    return textwrap.dedent("\n".join(lines[start:end]))


def test_readme_example_runs_on_a_new_network(tmp_path, monkeypatch):
    train, val, test = digits_arrays()
    monkeypatch.chdir(tmp_path)
    env = {"train": train, "val": val, "test": test}
    exec(compile(readme_example(), "README.md", "exec"), env)
    log, ours, hara, infl, scores = (env[k] for k in ("log", "ours", "hara", "infl", "scores"))
    assert list(log.columns[:1]) == ["epoch"] and len(log) == 2
    for frame in (ours, hara, infl):
        assert list(frame.columns) == ["x:image", "y:label", "influence", "datasource_index"]
        assert len(frame) == 150 and frame.influence.is_monotonic_increasing
        assert sorted(frame.datasource_index) == list(range(150))
    assert not np.allclose(ours.influence, hara.influence)  # two estimators, two orders
    assert {"val_accuracy", "test_accuracy", "test_loss"} <= set(scores.columns)
    assert scores.test_accuracy.between(0, 1).all()
    # the second call reuses the first's training and scores (same folder, same settings)
    csv = tmp_path / "cleansing_run/influence/Ours/influence_ours_0.csv"
    stamp = csv.stat().st_mtime_ns
    again = Cleanser(REGISTRY, env["two_layer_tanh"], train=train, val=val, test=test, out="cleansing_run", epochs=2)
    pd.testing.assert_frame_equal(again.influence("Ours"), ours)
    assert csv.stat().st_mtime_ns == stamp


def test_scores_of_a_user_network_equal_the_built_in_path(tmp_path):
    # the user's logreg takes the generic path (double backward, nn.grad); the built-in logreg the
    # forward-mode fast path: same data, same initial parameters, same trace -> the same scores
    train, val, test = digits_arrays()
    c = Cleanser(REGISTRY, user_logreg, train=train, val=val, test=test, out=tmp_path / "api", epochs=2)
    got = {m: c.influence(m).sort_values("datasource_index").influence.to_numpy()
           for m in ("Hara", "Ours", "Influence_functions")}
    args = ["-ds", "digits", "-m", "logreg", "-e", "2", "--n-train", "150", "--n-val", "50", "--n-test", "60",
            "--no-augment", "-r", "0", "-j", "1", "--no-progress", "--gallery", "0", "-o", str(tmp_path / "cli"),
            "--methods", "Hara", "Ours", "Influence_functions"]
    assert eval_sgd_influence.main(args) == 0
    for m, scores in got.items():
        ref = pd.read_csv(tmp_path / "cli/influence" / m / f"influence_{m.lower()}_0.csv")
        ref = ref.sort_values("datasource_index").influence.to_numpy()
        np.testing.assert_allclose(scores, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_networks_the_api_cannot_take_are_refused_in_one_line(tmp_path):
    from common.errors import UserError
    train, val, test = digits_arrays(40, 20, 20)

    def with_batch_norm(x, train):
        return PF.affine(PF.batch_normalization(x, batch_stat=train), 10)

    c = Cleanser(REGISTRY, with_batch_norm, train=train, val=val, test=test, out=tmp_path / "bn", epochs=1)
    with pytest.raises(UserError, match="without gradient .* describe it in models/networks.py"):
        c.train()
    c = Cleanser(REGISTRY, two_layer_tanh, train=train, val=val, test=test, out=tmp_path / "td", epochs=1)
    with pytest.raises(UserError, match="has no layer that turn-over dropout can mask"):
        c.influence("Turnover_dropout")
    with pytest.raises(UserError, match="uint8"):
        Cleanser(REGISTRY, two_layer_tanh, train=(train[0].astype(float), train[1]), val=val, test=test,
                 out=tmp_path / "f")

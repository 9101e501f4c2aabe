"""Hara_all_epochs: SGD-influence over all epochs with every step's parameters replayed from the
per-epoch checkpoints (sgd_influence/replay.py), against a reference that keeps every step's
parameters, against Hara over the last epoch, and across segment sizes and an interrupted run."""
import numpy as np
import pytest

import eval_sgd_influence
from cleansing.cli import run_main
from cleansing.config import make_config
from cleansing.paths import RunPaths
from cleansing.pipeline import Plan, run_trial
from cleansing.train import TrainConfig, run_steps
from cleansing.trial import trial_context
from common.params_io import load_params
from datasets.batches import training_batch
from estimators import REGISTRY
from sgd_influence import HaraAllEpochs, ReplayOptions
from sgd_influence.estimators import Hara
from sgd_influence.replay import replay_segment, replayed_sgd_influence, segment_starts

ALL = HaraAllEpochs()


def _trial(tmp_path_factory, name, **settings):
    cfg = make_config(REGISTRY, out=str(tmp_path_factory.mktemp(name)), methods=("Hara", "Hara_all_epochs"),
                      remove=(), show_progress=False, **settings)
    run_trial(Plan.of(cfg, REGISTRY), 0)
    return trial_context(cfg, 0)


@pytest.fixture(scope="module")
def logreg(tmp_path_factory):
    """Logistic regression on digits (1197 training samples), batch 32, 3 epochs of 38 steps."""
    return _trial(tmp_path_factory, "logreg", dataset="digits",
                  train=TrainConfig(model="logreg", epochs=3, batch_size=32, lr=0.05, augment=False))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """cnn6 (batch norm: running statistics in the replayed state) on 60 digits, batch 16, 2 epochs of 4 steps,
    with augmentation (the replay reuses the trace's seeds)."""
    return _trial(tmp_path_factory, "cnn", dataset="digits", n_train=60, n_val=40, n_test=40,
                  train=TrainConfig(model="cnn6", epochs=2, batch_size=16, lr=0.05, augment=True))


def _reference(trial):
    """Every step's parameters kept during one uninterrupted training from the initial ones, then the
    recursion over all epochs, last step first (what Hara_all_epochs computes without replay)."""
    learner, trace, data = trial.learner, trial.trace, trial.data
    final = learner.state()
    learner.set_state(trial.epoch_params(0, "test"))
    states = []
    run_steps(learner, data, trace, list(range(trace.n_steps)), trial.cfg.train.augment,
              before_step=lambda t: states.append(learner.state()), report=False)
    assert all(np.array_equal(learner.state()[k], final[k]) for k in final)  # the training's own trajectory
    infl = np.zeros(len(data.train))
    u = {k: np.asarray(v, np.float64) for k, v in trial.u.items()}
    u_stats = {k: np.asarray(v, np.float64) for k, v in trial.u_stats.items()}
    for t in range(trace.n_steps - 1, -1, -1):
        learner.set_state(states[t])
        idx, seeds = trace.batch(t)
        x, y = training_batch(data, idx, seeds, trial.cfg.train.augment)
        delta, u, u_stats = learner.step_backward(x, y, float(trace.lr[t]), u, u_stats)
        infl[idx] += delta
    learner.set_state(final)
    return infl


def _stored(trial):
    paths = RunPaths(trial.cfg.out)
    from cleansing.influence_csv import read_influence_csv
    f = read_influence_csv(paths.influence_csv("Hara_all_epochs", 0), len(trial.data.train))
    s = np.empty(len(trial.data.train))
    s[f.datasource_index] = f.influence
    return s


@pytest.mark.parametrize("which", ["logreg", "cnn"])
def test_equals_a_reference_that_keeps_every_step(which, request):
    trial = request.getfixturevalue(which)
    ref = _reference(trial)
    got = ALL.scores(trial)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-12)
    # the same recursion in the same order on bit-identical parameters: on the CPU even the bytes agree
    assert np.array_equal(got, ref)
    # the pipeline's CSV holds the same scores (written with 17 significant digits or so)
    np.testing.assert_allclose(_stored(trial), got, rtol=1e-12, atol=0)
    # every epoch differs from Hara's last-epoch-only scores and every sample has a score
    assert np.count_nonzero(got) == len(got) and not np.allclose(got, Hara().scores(trial))


@pytest.mark.parametrize("which", ["logreg", "cnn"])
def test_one_traced_epoch_is_hara_byte_for_byte(which, request):
    # the replayed parameters are bit-identical to Hara's stored ones on the CPU (next test), and the
    # recursion is the same code in the same order: the scores are equal as bytes, not only to tolerance
    trial = request.getfixturevalue(which)
    one = ALL.scores(trial, ReplayOptions(trace_epochs=1, replay_segment=3))
    assert np.array_equal(one, Hara().scores(trial))


@pytest.mark.parametrize("which", ["logreg", "cnn"])
def test_replay_reproduces_the_stored_parameters_bit_for_bit(which, request):
    trial = request.getfixturevalue(which)
    learner, trace = trial.learner, trial.trace
    final = learner.state()
    E = trace.n_epochs
    steps = trace.epoch_steps(E - 1)
    try:
        starts = segment_starts(learner, trial.data, trace, steps, trial.cfg.train.augment,
                                trial.epoch_params(E - 1, "test"), 3)
        for k in (0, len(starts) - 1):
            seg = steps[3 * k:3 * k + 3]
            states = replay_segment(learner, trial.data, trace, seg, trial.cfg.train.augment, starts[k], True)
            for t, state in zip(seg, states):
                stored = trial.step_params(int(t))
                assert set(stored) == set(state) and all(np.array_equal(state[n], stored[n]) for n in state), t
        assert all(np.array_equal(learner.state()[n], final[n]) for n in final)  # after the epoch's last step
    finally:
        learner.set_state(final)
    # the pipeline's replay log: every epoch's replay ended on the stored checkpoint exactly
    log = __import__("pandas").read_csv(RunPaths(trial.cfg.out).log("hara_all_epochs_replay", 0))
    assert sorted(log.epoch) == list(range(1, E + 1)) and log.bit_exact.all() and (log.max_abs_diff == 0).all()


def test_segment_size_does_not_change_a_byte(logreg):
    whole = ALL.scores(logreg, ReplayOptions(replay_segment=1000))  # larger than the 38 steps of an epoch
    for s in (1, 3):
        assert np.array_equal(ALL.scores(logreg, ReplayOptions(replay_segment=s)), whole), s
    assert np.array_equal(ALL.scores(logreg), whole)  # the default: every epoch in one segment here


def test_explains_errors_over_the_traced_epochs(logreg):
    found = ALL.explain(logreg, ReplayOptions(trace_epochs=2), 2)
    assert found.influence.shape == (len(logreg.data.train), 2) and np.all(np.isfinite(found.influence))
    assert "traced epochs" in found.formula and "last epoch" not in found.formula


def test_interrupted_run_resumes_to_the_same_bytes(logreg, tmp_path):
    t = logreg
    args = (t.learner, t.data, t.trace, t.u, t.cfg.train.augment, lambda e: t.epoch_params(e, "test"), range(3), 10)
    whole, whole_log = replayed_sgd_influence(*args, u_stats=t.u_stats)
    path = tmp_path / "resume.npz"
    done = []

    def stop_after_5(a):
        done.append(a)
        if len(done) == 5:  # 38 steps: segments of 10, 10, 10, 8 per epoch: stop in the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replayed_sgd_influence(*args, u_stats=t.u_stats, checkpoint=path, after_segment=stop_after_5)
    assert path.is_file() and int(np.load(path)["reached"]) == done[-1] == 38 + 30
    assert all(np.array_equal(t.learner.state()[k], v) for k, v in load_params(t.paths.params(0, "final")).items())
    later = []
    again, log = replayed_sgd_influence(*args, u_stats=t.u_stats, checkpoint=path, after_segment=later.append)
    assert later[0] == 38 + 20 and len(later) == 12 - 5  # the finished segments were not recomputed
    assert np.array_equal(again, whole) and log.equals(whole_log)
    assert not path.exists()
    # a resume file of other inputs (another target u) is ignored, not used
    with pytest.raises(KeyboardInterrupt):
        done.clear()
        replayed_sgd_influence(*args, u_stats=t.u_stats, checkpoint=path, after_segment=stop_after_5)
    other = {k: 2 * v for k, v in t.u.items()}
    doubled, _ = replayed_sgd_influence(*args[:3], other, *args[4:], u_stats={}, checkpoint=path)
    ref, _ = replayed_sgd_influence(*args[:3], other, *args[4:], u_stats={})
    assert np.array_equal(doubled, ref)


def test_bad_settings_are_one_line_and_exit_2(tmp_path, capsys):
    base = ["--no-progress", "-j", "1", "-o", str(tmp_path / "o"), "-ds", "digits", "-m", "logreg", "-e", "2",
            "--methods", "Hara_all_epochs"]
    assert run_main(eval_sgd_influence.main, base + ["--trace-epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --trace-epochs 3 is not within the run's 2 epoch(s); choose 1 to 2", err
    with pytest.raises(SystemExit) as exc:
        run_main(eval_sgd_influence.main, base + ["--replay-segment", "0"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "--replay-segment: 0 must be at least 1" in err, err

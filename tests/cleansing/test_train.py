"""Training with a trace, the parameter caches, and exact replay."""
import math

import numpy as np
import pandas as pd
import pytest

from cleansing.paths import RunPaths
from cleansing.retrain import retrain_last_epoch
from cleansing.trace import load_trace, make_schedule, save_trace
from cleansing.train import (
    TrainConfig,
    evaluate_splits,
    head_complete,
    head_epochs,
    new_learner,
    run_steps,
    train_head,
    train_last_epoch,
    train_with_trace,
    training_complete,
)
from common.errors import UserError
from common.params_io import load_params
from datasets import load_dataset


def test_schedule_visits_every_sample_once_per_epoch():
    tr = make_schedule(n_train=70, epochs=3, batch_size=32, lr=0.05, seed=5)
    assert tr.n_steps == 9 and tr.n_epochs == 3
    for e in range(3):
        idx = np.concatenate([tr.batch(t)[0] for t in tr.epoch_steps(e)])
        assert sorted(idx) == list(range(70))
    assert [len(tr.batch(t)[0]) for t in range(3)] == [32, 32, 6]
    np.testing.assert_array_equal(tr.last_epoch_steps(), [6, 7, 8])
    assert np.all(tr.lr == 0.05)


def test_schedule_is_seeded():
    a, b, c = (make_schedule(100, 2, 10, 0.1, s) for s in (1, 1, 2))
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.seeds, b.seeds)
    assert not np.array_equal(a.indices, c.indices)
    # each sample gets a new augmentation seed every epoch
    s0 = dict(zip(*[np.concatenate(z) for z in zip(*[a.batch(t) for t in a.epoch_steps(0)])]))
    s1 = dict(zip(*[np.concatenate(z) for z in zip(*[a.batch(t) for t in a.epoch_steps(1)])]))
    assert sum(s0[i] != s1[i] for i in range(100)) > 90


def test_trace_round_trip_and_crafted_files_are_refused(tmp_path):
    tr = make_schedule(50, 2, 16, 0.05, 0)
    save_trace(tmp_path / "trace.npz", tr)
    back = load_trace(tmp_path / "trace.npz", 50)
    assert np.array_equal(back.indices, tr.indices) and np.array_equal(back.lr, tr.lr)
    with pytest.raises(UserError, match="unexpected content"):
        load_trace(tmp_path / "trace.npz", 10)  # indices beyond the training set
    # a pickled object array inside an npz must not be unpickled
    evil = tmp_path / "evil.npz"
    np.savez(evil, epoch=np.array([object()], dtype=object), step=np.arange(1), lr=np.ones(1),
             indices=np.zeros((1, 1), int), seeds=np.zeros((1, 1), int))
    with pytest.raises(UserError, match="is not a valid trace"):
        load_trace(evil, 50)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not a valid trace"):
        load_trace(tmp_path / "junk.npz", 50)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, mnist_dir):
    """cnn6 on 2,000 MNIST samples, 2 epochs, batch 32, with Hara's cache."""
    data = load_dataset("mnist", 0, data_dir=mnist_dir, n_train=2000, n_val=500, n_test=500)
    cfg = TrainConfig(model="cnn6", epochs=2, batch_size=32, lr=0.05)
    paths = RunPaths(tmp_path_factory.mktemp("mnist_run"))
    train_with_trace(cfg, data, paths, 0, save_hara=True, show_progress=False)
    return cfg, data, paths


def test_training_writes_trace_caches_and_log(mnist_run):
    cfg, data, paths = mnist_run
    w = paths.weights(0)
    for name in ("initial.h5", "start_last_epoch.h5", "final.h5", "trace.npz", "train_log.csv"):
        assert (w / name).is_file(), name
    T = math.ceil(2000 / 32)
    hara = sorted(paths.steps_dir(0).glob("step_*.h5"))
    assert len(hara) == T == 63
    assert hara[0].name == f"step_{T:06d}.h5" and hara[-1].name == f"step_{2 * T - 1:06d}.h5"
    assert training_complete(paths, 0, hara=True, trace_steps=T)
    assert not training_complete(paths, 0, hara=True, trace_steps=T + 1)
    log = pd.read_csv(paths.train_log(0))
    assert list(log.epoch) == [1, 2]
    assert set(log.columns) >= {"train_loss", "val_loss", "val_accuracy", "test_accuracy"}
    assert log.val_accuracy.iloc[-1] > 0.5  # well above chance (0.1) after 126 steps
    # Hara's first cached step is the start of the last epoch
    a, b = load_params(hara[0]), load_params(paths.params(0, "start_last_epoch"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    trace = load_trace(paths.trace(0), 2000)
    assert trace.n_steps == 2 * T and not list(w.glob("*partial*"))


def test_replaying_the_last_epoch_reproduces_the_final_parameters_exactly(mnist_run):
    cfg, data, paths = mnist_run
    trace = load_trace(paths.trace(0), len(data.train))
    learner = retrain_last_epoch(cfg, data, paths, 0, trace, np.zeros(len(data.train), bool))
    final = load_params(paths.params(0, "final"))
    for k, v in learner.params.items():
        assert np.array_equal(v.d, final[k]), k


def test_epoch_tasks_give_the_bytes_of_one_uninterrupted_training(tmp_path):
    """The epochs before the last are tasks of their own, their parameters passed on through files,
    and each epoch's evaluation is a task of its own: the final parameters, training losses and
    scores are those of one learner trained through every epoch without a file in between."""
    data = load_dataset("digits", 0, n_train=100, n_val=60, n_test=60)
    cfg = TrainConfig(model="cnn6", epochs=3, batch_size=32, lr=0.05)
    paths = RunPaths(tmp_path)
    assert head_epochs(cfg) == [1, 2] and head_epochs(TrainConfig(epochs=1)) == [0]
    train_head(cfg, data, paths, 0, show_progress=False)
    assert sorted(p.name for p in paths.epochs_dir(0).iterdir()) == [
        "epoch_001.csv", "epoch_001.h5", "epoch_001_margins.npz", "epoch_001_train.csv", "epoch_002.csv",
        "epoch_002_margins.npz", "epoch_002_train.csv"]
    assert not head_complete(paths, 0) and not paths.params(0, "final").exists()
    train_last_epoch(cfg, data, paths, 0, save_hara=False, show_progress=False)
    assert not paths.epochs_dir(0).exists()  # their rows are in train_log.csv now

    trace = load_trace(paths.trace(0), len(data.train))
    learner = new_learner(cfg, data, 0)
    assert all(np.array_equal(v.d, load_params(paths.params(0, "initial"))[k]) for k, v in learner.params.items())
    losses, scores = [], []
    for e in range(3):
        losses.append(run_steps(learner, data, trace, trace.epoch_steps(e), cfg.augment))
        scores.append(evaluate_splits(learner, data, test=e == 2))
        if e == 1:
            start = load_params(paths.params(0, "start_last_epoch"))
            assert all(np.array_equal(v.d, start[k]) for k, v in learner.params.items())
    final = load_params(paths.params(0, "final"))
    assert all(np.array_equal(v.d, final[k]) for k, v in learner.params.items())
    log = pd.read_csv(paths.train_log(0), float_precision="round_trip")
    assert list(log.epoch) == [1, 2, 3] and log.train_loss.tolist() == losses
    cols = list(scores[0])
    assert log[cols].iloc[2].to_dict() == scores[2]
    for e in (0, 1):  # the epochs before the last: validation only (issue 32's cost cut)
        assert log.val_loss[e] == scores[e]["val_loss"] and log.val_accuracy[e] == scores[e]["val_accuracy"]
        assert np.isnan(log.test_loss[e]) and np.isnan(log.test_accuracy[e])
    assert (log.seconds > 0).all()


def test_epoch_tasks_resume_and_an_older_folder_keeps_its_rows(mnist_run, tmp_path):
    """A finished epoch task is not run again, one cut before its marker is; folders written
    before the epochs were tasks (a ``head_log.csv``, or a whole ``train_log.csv``) keep their rows
    and end with the same final parameters."""
    from cleansing.config import make_config
    from cleansing.pipeline import Plan, train_epoch_task, train_eval_task
    from estimators import REGISTRY
    cfg = make_config(REGISTRY, dataset="digits", model="logreg", epochs=3, n_train=150, n_val=60, n_test=60,
                      out=str(tmp_path / "o"), methods=("Random",), remove=(0,))
    plan, paths = Plan.of(cfg, REGISTRY), RunPaths(tmp_path / "o")
    assert train_epoch_task(plan, 1, 1)[1][0][:3] == (1, "train", "epoch_1")
    assert train_epoch_task(plan, 1, 1) == (None, [])  # done: its marker is there
    paths.epoch_log(1, 1, "train").unlink()  # cut before the marker: the epoch is trained again, same bytes
    before = paths.epoch_params(1, 1).read_bytes()
    assert train_epoch_task(plan, 1, 1)[1] and paths.epoch_params(1, 1).read_bytes() == before
    assert train_eval_task(plan, 1, 1)[1][0][:3] == (1, "train", "eval_1")
    assert train_eval_task(plan, 1, 1) == (None, [])

    mcfg, data, done = mnist_run
    older = RunPaths(tmp_path / "older")
    older.weights(0).mkdir(parents=True)
    for name in ("initial.h5", "start_last_epoch.h5", "trace.npz"):
        (older.weights(0) / name).write_bytes((done.weights(0) / name).read_bytes())
    whole = pd.read_csv(done.train_log(0), float_precision="round_trip")
    whole.iloc[:1].to_csv(older.head_log(0), index=False)  # two tasks: the head's own log
    assert head_complete(older, 0)
    train_last_epoch(mcfg, data, older, 0, save_hara=False, show_progress=False)
    assert older.params(0, "final").read_bytes() == done.params(0, "final").read_bytes()
    again = pd.read_csv(older.train_log(0), float_precision="round_trip")
    pd.testing.assert_frame_equal(whole.drop(columns="seconds"), again.drop(columns="seconds"))
    # one task: train_log.csv holds the earlier epochs; the last epoch reruns (here for Hara's cache)
    older.head_log(0).unlink()
    older.params(0, "final").unlink()
    assert head_complete(older, 0) and not training_complete(older, 0, hara=False)
    train_last_epoch(mcfg, data, older, 0, save_hara=True, show_progress=False)
    assert older.params(0, "final").read_bytes() == done.params(0, "final").read_bytes()
    assert len(list(older.steps_dir(0).glob("step_*.h5"))) == 63
    third = pd.read_csv(older.train_log(0), float_precision="round_trip")
    pd.testing.assert_frame_equal(whole.drop(columns="seconds"), third.drop(columns="seconds"))
    assert third.seconds.iloc[0] == whole.seconds.iloc[0]  # the first epoch's row is kept, not re-timed


def test_validation_gradient_is_stored_once_and_read_back_exactly(mnist_run):
    from cleansing.train import load_training
    from cleansing.trial import Trial, load_validation_grad
    cfg, data, paths = mnist_run
    trace, learner = load_training(cfg, data, paths, 0)
    first = Trial(None, 0, data, paths, trace, learner)
    u, stats = first.u, first.u_stats
    assert set(u) == set(learner.trainable) and stats  # cnn6 has batch norm: its running statistics
    first.save_validation_grad()
    # without a learner the trial can only read them: the same arrays, bit for bit, and dtypes
    stored = Trial(None, 0, data, paths, trace, None)
    for mine, theirs in ((u, stored.u), (stats, stored.u_stats)):
        assert list(mine) == list(theirs)
        for k in mine:
            assert theirs[k].dtype == np.asarray(mine[k]).dtype and np.array_equal(theirs[k], mine[k]), k
    # a damaged file, or one holding a pickled object, is never read: the gradient is recomputed
    path = paths.validation_grad(0)
    np.savez(path.with_suffix(".evil.npz"), **{"u/x": np.array([object()], dtype=object)})
    path.with_suffix(".evil.npz").replace(path)
    assert load_validation_grad(path) is None
    path.write_bytes(b"not a zip")
    assert load_validation_grad(path) is None
    again = Trial(None, 0, data, paths, trace, learner)
    assert all(np.array_equal(again.u[k], u[k]) for k in u)
    path.unlink()


@pytest.mark.parametrize("retrain_all", [False, True])
def test_no_removal_rows_are_the_bytes_a_retraining_without_removal_writes(tmp_path, retrain_all):
    """No_Removal scores the final model (retrains every epoch with retrain_all): the same file an
    actual retraining with nothing removed writes."""
    from cleansing.analyze import NO_REMOVAL
    from cleansing.config import make_config
    from cleansing.pipeline import Plan, baseline_task, train_epoch_task, train_eval_task, train_task
    from cleansing.retrain import SCORE_COLUMNS, retrain_scores
    from cleansing.trial import load_trial_data
    from common.fileio import write_csv_atomic
    from estimators import REGISTRY
    cfg = make_config(REGISTRY, dataset="digits", model="logreg", epochs=3, n_train=150, n_val=60, n_test=60,
                      out=str(tmp_path / "o"), methods=("Random",), remove=(0,), retrain_all=retrain_all)
    plan = Plan.of(cfg, REGISTRY)
    for epoch in (1, 2):
        train_epoch_task(plan, 1, epoch)
        train_eval_task(plan, 1, epoch)
    for task in (train_task, baseline_task):
        task(plan, 1)
    paths, data = RunPaths(cfg.out), load_trial_data(cfg, 1)
    rows = retrain_scores(cfg.train, data, paths, 1, load_trace(paths.trace(1), len(data.train)),
                          np.zeros(len(data.train), bool), retrain_all)
    write_csv_atomic(tmp_path / "retrained.csv", pd.DataFrame(rows, columns=SCORE_COLUMNS))
    mine = paths.score_csv(NO_REMOVAL, 0, 1).read_bytes()
    assert mine == (tmp_path / "retrained.csv").read_bytes()
    assert len(mine.decode().splitlines()) == 1 + (3 if retrain_all else 1)

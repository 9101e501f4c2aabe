"""Tests of turn-over dropout: volatile masks, the masked training step, the split forward and
its linear fast path, influence shape and sign, the driver's output tree, and the paper's Fig. 2
sanity check (the flipped-mask training loss behaves like a held-out loss)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import eval_turnover_dropout as driver
from cleansing.trace import make_schedule
from cleansing.train import TrainConfig
from datasets import load_dataset
from datasets.batches import split_batches
from estimators import REGISTRY
from models import build_model
from turnover_dropout import TDLearner, flip, influence as tdi, instance_masks, resolve_layers
from turnover_dropout.train import train_turnover


def _td(model_name, shape, layers, seed=0):
    model = build_model(model_name, shape, 10)
    return TDLearner(model, model.create_parameters(np.random.RandomState(seed)), layers, mask_seed=3)


# ------------------------------------------------------------------------------------ masks
def test_masks_deterministic_values_and_flip():
    shapes = {"block2": 64, "block3": 128}
    idx = np.array([0, 1, 2, 5, 1999, 123456])
    a = instance_masks(idx, 7, shapes)
    b = instance_masks(idx, 7, shapes)
    for k in shapes:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].shape == (len(idx), shapes[k]) and a[k].dtype == np.float32
        assert set(np.unique(a[k])) == {0.0, 2.0}
        assert len({r.tobytes() for r in a[k]}) == len(idx)          # differ across indices
        np.testing.assert_array_equal(flip(a)[k], 2.0 - a[k])
        assert set(np.unique(flip(a)[k])) == {0.0, 2.0}
    # a row depends only on its own index (not on the rest of the batch), per point and seed
    np.testing.assert_array_equal(instance_masks(idx[::-1], 7, shapes)["block3"], a["block3"][::-1])
    np.testing.assert_array_equal(instance_masks([5], 7, {"block3": 128})["block3"][0], a["block3"][3])
    assert not np.array_equal(instance_masks(idx, 8, shapes)["block3"], a["block3"])
    assert not np.array_equal(a["block2"], a["block3"][:, :64])
    # Bernoulli(0.5) scaled by 2: mean 1 over many units and instances; no unit always on or off
    big = instance_masks(np.arange(4000), 0, {"fc1": 128})["fc1"]
    assert abs(big.mean() - 1.0) < 0.01
    assert 0.45 < (big > 0).mean(axis=0).min() and (big > 0).mean(axis=0).max() < 0.55


def test_resolve_layers():
    assert resolve_layers("cnn6", ("block1", "block2", "block3"), None) == ("block3",)
    assert resolve_layers("mlp", ("fc1",), None) == ("fc1",)
    assert resolve_layers("cnn6", ("block1", "block2", "block3"), ["block3", "block2"]) == ("block2", "block3")
    assert resolve_layers("cnn6", ("block1", "block2", "block3"), ["all"]) == ("block1", "block2", "block3")
    with pytest.raises(ValueError, match="choose from block1, block2, block3"):
        resolve_layers("cnn6", ("block1", "block2", "block3"), ["fc1"])
    with pytest.raises(ValueError, match="no layer"):
        resolve_layers("logreg", (), None)


# ------------------------------------------------------------------------------------ training step
def _changed(before, after, name):
    return np.abs(after[name] - before[name]) > 0


def test_masked_step_mlp_updates_only_the_rows_units():
    td = _td("mlp", (1, 8, 8), ("fc1",))
    rng = np.random.RandomState(0)
    x, y = rng.randn(1, 1, 8, 8).astype(np.float32), np.array([3])
    keep = td.masks(np.array([17]))["fc1"][0] > 0
    before = td.state()
    td.td_sgd_step(x, y, np.array([17]), lr=0.5)
    after = td.state()
    # dropped hidden units: their incoming weights (fc1/W columns), biases and outgoing weights
    # (fc2/W rows) get no gradient from the row; kept units (alive ones) are updated
    assert not _changed(before, after, "fc1/affine/W")[:, ~keep].any()
    assert not _changed(before, after, "fc1/affine/b")[~keep].any()
    assert not _changed(before, after, "fc2/affine/W")[~keep].any()
    alive = (x.reshape(1, -1) @ before["fc1/affine/W"] + before["fc1/affine/b"])[0] > 0
    assert _changed(before, after, "fc2/affine/W")[keep & alive].all(axis=1).all()
    assert _changed(before, after, "fc2/affine/b").all()           # shared: learns every instance


def test_masked_step_cnn6_each_row_its_own_mask():
    td = _td("cnn6", (1, 8, 8), ("block3",))                        # block3 output: 128 x 1 x 1
    rng = np.random.RandomState(1)
    x, y = rng.randn(2, 1, 8, 8).astype(np.float32), np.array([1, 4])
    idx = np.array([11, 12])
    m = td.masks(idx)["block3"] > 0
    before = td.state()
    td.td_sgd_step(x, y, idx, lr=0.5)
    after = td.state()
    fc = _changed(before, after, "fc/affine/W")                    # (128, 10): row c = channel c
    conv6 = _changed(before, after, "conv6/conv/W").reshape(128, -1)
    dropped_by_both = ~m[0] & ~m[1]
    assert dropped_by_both.sum() > 10
    assert not fc[dropped_by_both].any() and not conv6[dropped_by_both].any()
    assert not _changed(before, after, "conv6/conv/b")[dropped_by_both].any()
    kept = m[0] | m[1]
    assert fc[kept].any(axis=1).mean() > 0.3                         # (channels dead after ReLU stay)
    # a batch holding one instance twice: exactly its dropped channels stay untouched
    td2 = _td("cnn6", (1, 8, 8), ("block3",))
    before = td2.state()
    td2.td_sgd_step(np.repeat(x[:1], 2, 0), np.array([1, 1]), np.array([11, 11]), lr=0.5)
    fc = _changed(before, td2.state(), "fc/affine/W")
    assert not fc[~m[0]].any() and fc[m[0]].any()
    assert _changed(before, td2.state(), "conv1/conv/W").any()      # lower layers learn every instance


# ------------------------------------------------------------------------------------ split forward
@pytest.mark.parametrize("model_name,layers", [("cnn6", ("block3",)), ("cnn6", ("block2", "block3")),
                                               ("cnn6", ("block1", "block2", "block3")), ("mlp", ("fc1",))])
def test_split_forward_equals_model_logits(model_name, layers):
    import nnabla as nn
    td = _td(model_name, (1, 8, 8), layers)
    x = np.random.RandomState(2).randn(5, 1, 8, 8).astype(np.float32)
    y = np.arange(5)
    masks = td.masks(np.arange(5) + 40)
    split, _ = td.head_losses(td.features(x), y, masks)
    xv = nn.Variable.from_numpy_array(x)
    mv = {k: nn.Variable.from_numpy_array(v) for k, v in masks.items()}
    logits = td.model.logits(xv, td.params, train=False, masks=mv)
    logits.forward()
    z = logits.d.astype(np.float64)
    ref = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(5), y]
    np.testing.assert_allclose(split, ref, rtol=1e-5, atol=1e-6)
    assert (td.linear_head() is not None) == (layers in (("block3",), ("fc1",)))


@pytest.mark.parametrize("model_name,layer", [("cnn6", "block3"), ("mlp", "fc1")])
def test_linear_head_matches_nnabla_head(model_name, layer, monkeypatch):
    td = _td(model_name, (1, 16, 16), (layer,))                     # cnn6 block3: 128 x 2 x 2
    assert td.feature_shape == ((128, 2, 2) if model_name == "cnn6" else (128,))
    for v in td.trainable.values():                                  # non-trivial biases too
        v.d = v.d + 0.05 * np.random.RandomState(3).randn(*v.shape)
    x = np.random.RandomState(4).randn(7, 1, 16, 16).astype(np.float32)
    h, y, inst = td.features(x), np.array([0, 1, 2, 3, 4, 5, 6]), np.arange(9) * 3
    fast = list(tdi.pair_differences(td, h, y, inst))
    monkeypatch.setattr(TDLearner, "linear_head", lambda self: None)
    slow = list(tdi.pair_differences(td, h, y, inst))
    own_f = np.concatenate([o for _, o, _ in fast])
    fl_f = np.concatenate([f for _, _, f in fast])
    own_s = np.concatenate([o for _, o, _ in slow])
    fl_s = np.concatenate([f for _, _, f in slow])
    assert own_f.shape == (9, 7)
    np.testing.assert_allclose(own_f, own_s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fl_f, fl_s, rtol=1e-4, atol=1e-5)
    # and both equal the whole masked network evaluated pair by pair
    i, z = 4, 2
    whole = td.masked_losses(x[z:z + 1], y[z:z + 1], td.masks(inst[i:i + 1], flipped=True))[0]
    assert abs(whole - fl_s[i, z]) < 1e-4


# ------------------------------------------------------------------------------------ influence
@pytest.fixture(scope="module")
def tiny_td():
    data = load_dataset("digits", 0, n_train=120, n_val=60, n_test=60)
    cfg = TrainConfig(model="mlp", epochs=8, augment=False)
    td, curve = train_turnover(cfg, data, make_schedule(120, 8, 32, 0.05, 0), 0, ("fc1",))
    return td, data, curve


def test_validation_influence_shape_and_definition(tiny_td):
    td, data, _ = tiny_td
    scores = tdi.validation_influence(td, data)
    assert scores.shape == (120,) and np.all(np.isfinite(scores))
    xv, yv = next(split_batches(data, data.val, len(data.val)))
    for i in (0, 57, 119):                                           # the definition, pair by pair
        rep = lambda m: {k: np.repeat(v, len(yv), 0) for k, v in m.items()}  # noqa: E731
        own = td.masked_losses(xv, yv, rep(td.masks(np.array([i]))))
        flipped = td.masked_losses(xv, yv, rep(td.masks(np.array([i]), flipped=True)))
        assert abs((flipped - own).mean() - scores[i]) < 1e-4


def test_residual_score_removes_what_the_mask_bits_predict(tiny_td):
    td, data, _ = tiny_td
    plain = tdi.validation_influence(td, data)
    resid = tdi.residual_validation_influence(td, data, n_fresh=3000)
    X = tdi.mask_design(td, np.arange(120))
    assert X.shape == (120, 129) and set(np.unique(X[:, 1:])) == {-1.0, 1.0} and (X[:, 0] == 1).all()
    # the baseline is fitted on fresh masks only: none of them is a training instance's mask
    h = tdi.split_features(td, data, data.val)
    coef = tdi.mask_baseline(td, h, data.val.labels, 3000)
    np.testing.assert_allclose(resid, plain - X @ coef, rtol=1e-9, atol=1e-12)
    fresh = tdi.FRESH_MASKS + np.arange(3000)
    gaps = tdi.influence_on_targets(td, h, data.val.labels, fresh)
    fit = tdi.mask_design(td, fresh) @ coef
    assert 1 - np.var(gaps - fit) / np.var(gaps) > 0.8           # the mask bits explain the gap's bulk
    assert np.var(resid) < 0.3 * np.var(plain)                     # and so most of the instances' scores
    assert not np.array_equal(td.masks(fresh[:5])["fc1"], td.masks(np.arange(5))["fc1"])


def test_influence_sign_on_itself(tiny_td):
    """Influence of z_i on itself: the sub-network that learned z_i has the lower loss (> 0)."""
    td, data, _ = tiny_td
    h = tdi.split_features(td, data, data.train)
    full = tdi.influence_on_targets(td, h, data.train.labels, 120, reduce_mean=False)
    assert full.shape == (120, 120)
    self_infl = np.diag(full)
    assert (self_infl > 0).mean() > 0.9 and self_infl.mean() > 5 * abs(full.mean() - self_infl.mean() / 120)
    own, flipped, _ = tdi.instance_losses(td, data, np.arange(120))
    np.testing.assert_allclose(flipped - own, self_infl, atol=1e-4)


def test_flipped_mask_loss_tracks_validation_not_training():
    """Paper Fig. 2: L(f^m~(z), z) stays at held-out level while L(f^m(z), z) keeps falling."""
    data = load_dataset("digits", 0, n_train=400)
    cfg = TrainConfig(model="mlp", epochs=20, augment=False)
    _, curve = train_turnover(cfg, data, make_schedule(400, 20, 32, 0.05, 0), 0, ("fc1",))
    last = curve.iloc[-1]
    own, flipped = last.train_loss_own_mask, last.train_loss_flipped_mask
    assert abs(flipped - last.val_loss) < abs(flipped - own)
    assert abs(flipped - last.val_loss_random_mask) < abs(flipped - own)
    assert own < 0.1 < last.val_loss < flipped                       # own mask overfits, flipped does not
    assert curve.train_loss_own_mask.iloc[-1] < 0.2 * curve.train_loss_own_mask.iloc[0]


# ------------------------------------------------------------------------------------ driver
def test_driver_writes_the_tree(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["-ds", "digits", "-m", "mlp", "-e", "2", "--n-train", "200", "-r", "0", "10", "-j", "1",
            "--no-progress", "-o", str(out)]
    assert driver.main(args) == 0
    for rel in ["influence/Turnover_dropout/influence_turnover_dropout_0.csv",
                "influence/Random/influence_random_0.csv",
                "score/Turnover_dropout/score_delete_worst_10_seed_0.csv",
                "score/Random/score_delete_worst_10_seed_0.csv",
                "score/No_Removal/score_delete_worst_0_seed_0.csv", "summary/summary.csv", "fig/result.png",
                "summary/explain_errors_Turnover_dropout_0.csv", "fig/explain_errors_Turnover_dropout_0.png",
                "summary/turnover_loss_curve_0.csv",
                "fig/turnover_loss_curve_0.png", "weights/seed_00/turnover/final.h5",
                "weights/seed_00/turnover/loss_log.csv", "weights/seed_00/final.h5"]:
        assert (out / rel).is_file(), rel
    infl = pd.read_csv(out / "influence/Turnover_dropout/influence_turnover_dropout_0.csv")
    assert list(infl.columns) == ["x:image", "y:label", "influence", "datasource_index"]
    assert len(infl) == 200 and infl.influence.is_monotonic_increasing
    assert sorted(infl.datasource_index) == list(range(200))
    assert json.loads((out / "manifest.json").read_text())["td_layers"] == ["fc1"]
    ex = pd.read_csv(out / "summary/explain_errors_Turnover_dropout_0.csv")
    assert len(ex) > 0 and (ex.true_label != ex.predicted_label).all()
    assert ex.test_index.nunique() <= 8 and ex.groupby("test_index").size().max() == 5
    for _, g in ex.groupby("test_index"):
        assert g.sort_values("rank").influence_on_wrong.is_monotonic_decreasing
    curve = pd.read_csv(out / "summary/turnover_loss_curve_0.csv")
    assert list(curve.epoch) == [1, 2]
    summary = pd.read_csv(out / "summary/summary.csv")
    assert {"Turnover_dropout", "Random", "No_Removal"} <= set(summary.method)
    # a rerun skips everything that exists (the TD network is not retrained)
    kept = ["weights/seed_00/turnover/final.h5", "summary/turnover_check_0.csv", "fig/turnover_loss_curve_0.png"]
    stamps = [(out / f).stat().st_mtime_ns for f in kept]
    assert driver.main(args) == 0
    assert [(out / f).stat().st_mtime_ns for f in kept] == stamps
    # an unknown mask point is refused with a one-line message naming it
    from cleansing.cli import run_main
    assert run_main(driver.main, args + ["--td-layers", "fc1", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_ensemble_of_networks_averages_their_scores(tmp_path):
    # --td-networks 2: a second TD network with its own mask stream, cached beside the first; the
    # CSV holds the mean of the two networks' scores, and each equals its own direct computation
    from common.params_io import load_params
    from turnover_dropout.masks import mask_stream
    from turnover_dropout.train import new_td_learner
    assert mask_stream("fc1") == "fc1" and mask_stream("fc1", 2) != mask_stream("fc1", 1) != "fc1"
    out = tmp_path / "ens"
    args = ["-ds", "digits", "-m", "mlp", "-e", "2", "--n-train", "200", "-r", "0", "-j", "1", "--no-progress",
            "--explain-max", "0", "--gallery", "0", "--methods", "Turnover_dropout", "Turnover_dropout_self",
            "--td-networks", "2", "-o", str(out)]
    assert driver.main(args) == 0
    assert json.loads((out / "manifest.json").read_text())["td_networks"] == 2
    cfg = driver.DRIVER.config(args, REGISTRY)
    data = load_dataset("digits", 0, n_train=200)
    nets = []
    for k, folder in enumerate(["turnover", "turnover_net1"]):
        conf = json.loads((out / "weights/seed_00" / folder / "config.json").read_text())
        assert conf.get("network", 0) == k
        td = new_td_learner(cfg.train, data, 0, ("fc1",), network=k)
        td.set_state(load_params(out / "weights/seed_00" / folder / "final.h5"))
        nets.append(td)
    idx = np.arange(200)
    assert (nets[0].masks(idx)["fc1"] != nets[1].masks(idx)["fc1"]).mean() > 0.4
    assert not np.allclose(nets[0].params["fc1/affine/W"].d, nets[1].params["fc1/affine/W"].d)
    per_net = [tdi.validation_influence(td, data) for td in nets]
    f = pd.read_csv(out / "influence/Turnover_dropout/influence_turnover_dropout_0.csv").sort_values("datasource_index")
    np.testing.assert_allclose(f.influence, np.mean(per_net, axis=0), rtol=1e-6, atol=1e-9)
    assert not np.allclose(per_net[0], per_net[1])
    own = [np.subtract(*tdi.instance_losses(td, data, idx)[:2]) for td in nets]
    f = pd.read_csv(out / "influence/Turnover_dropout_self/influence_turnover_dropout_self_0.csv")
    np.testing.assert_allclose(f.sort_values("datasource_index").influence, np.mean(own, axis=0), rtol=1e-6, atol=1e-9)


def test_explain_errors_sign_and_same_label(tiny_td):
    from cleansing.explain import explanation_table
    from turnover_dropout.report import explain_errors
    td, data, _ = tiny_td
    ex = explain_errors(td, data, max_errors=4)
    any_label = explanation_table(data, ex.wrong, ex.preds, ex.influence, 3)
    same = explanation_table(data, ex.wrong, ex.preds, ex.influence, 3, same_label=True)
    assert len(any_label) == 12 and (any_label.true_label != any_label.predicted_label).all()
    assert (same.train_label == same.predicted_label).all() and len(same) > 0
    # the score is L(f^m~, (x, pred)) - L(f^m, (x, pred)) of the listed pair, largest first
    row = any_label.iloc[0]
    x, _ = next(split_batches(data, data.test, 1, np.array([row.test_index])))
    y = np.array([row.predicted_label])
    i = np.array([row.datasource_index])
    direct = td.masked_losses(x, y, td.masks(i, flipped=True))[0] - td.masked_losses(x, y, td.masks(i))[0]
    assert abs(direct - row.influence_on_wrong) < 1e-4
    h = tdi.split_features(td, data, data.test, np.array([row.test_index]))
    all_i = tdi.influence_on_targets(td, h, y, 120, reduce_mean=False)[:, 0]
    assert abs(all_i.max() - row.influence_on_wrong) < 1e-5


def test_self_influence_finds_flipped_labels_and_the_check_splits_them(tmp_path):
    out = tmp_path / "noisy"
    args = ["-ds", "digits", "-m", "mlp", "-e", "20", "--n-train", "400", "--label-noise", "0.2", "-r", "0",
            "--methods", "Turnover_dropout", "Turnover_dropout_self", "--explain-max", "0", "--gallery", "0",
            "-j", "1", "--no-progress", "-o", str(out)]
    assert driver.main(args) == 0
    infl = pd.read_csv(out / "influence/Turnover_dropout_self/influence_turnover_dropout_self_0.csv")
    assert len(infl) == 400 and infl.influence.is_monotonic_increasing
    found = int(infl.noisy.iloc[:40].sum())  # 80 flipped of 400: a random 10% holds 8 (measured 29)
    assert found >= 24, found
    check = pd.read_csv(out / "summary/turnover_check_0.csv").set_index("group")
    assert list(check.index) == ["all", "clean", "flipped_label"]
    assert list(check.n) == [400, 320, 80]
    assert check.loc["flipped_label", "train_loss_flipped_mask"] > 2 * check.loc["clean", "train_loss_flipped_mask"]
    assert bool(check.loc["clean", "flipped_closer_to_val"])
    assert not list((out / "summary").glob("explain_errors*"))   # --explain-max 0
    det = pd.read_csv(out / "summary/detection.csv")
    assert {"Turnover_dropout", "Turnover_dropout_self"} <= set(det.method)

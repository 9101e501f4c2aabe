import numpy as np
import pytest

from common.errors import UserError
from common.params_io import load_params, save_params
from models import build_model, count_trainable


def test_cnn6_has_the_papers_parameter_count():
    m = build_model("cnn6", (1, 32, 32), 10)
    p = m.create_parameters(np.random.RandomState(0))
    assert count_trainable(p) == 307_370
    stats = sum(v.size for v in p.values() if not v.need_grad)
    assert stats == 448
    assert sorted(k for k in p if k.endswith("/mean")) == ["conv1/bn/mean", "conv3/bn/mean", "conv5/bn/mean"]


def test_cnn6_parameter_file_is_the_papers_ours_cache_size(tmp_path):
    m = build_model("cnn6", (1, 32, 32), 10)
    path = tmp_path / "final.h5"
    save_params(path, m.create_parameters(np.random.RandomState(0)))
    size = path.stat().st_size
    # 307,818 float32 values = 1,231,272 B of payload; the file is 1.24 MB to two decimals.
    assert 1.23e6 <= size < 1.245e6, size


@pytest.mark.parametrize("name,expected", [("logreg", 1024 * 10 + 10), ("mlp", 1024 * 128 + 128 + 128 * 10 + 10)])
def test_small_models_parameter_counts(name, expected):
    m = build_model(name, (1, 32, 32), 10)
    assert count_trainable(m.create_parameters(np.random.RandomState(0))) == expected


def test_colour_cnn6_counts_input_channels():
    m = build_model("cnn6", (3, 32, 32), 10)
    assert count_trainable(m.create_parameters(np.random.RandomState(0))) == 307_370 + 2 * 9 * 32


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'resnet'; choose one of: cnn6, logreg, mlp"):
        build_model("resnet", (1, 32, 32), 10)


def test_parameters_round_trip_through_nnabla_h5(tmp_path):
    m = build_model("mlp", (1, 8, 8), 3)
    p = m.create_parameters(np.random.RandomState(1))
    save_params(tmp_path / "p.h5", p)
    back = load_params(tmp_path / "p.h5")
    assert list(back) == list(p)
    for k in p:
        np.testing.assert_array_equal(back[k], p[k].d)
    assert not list(tmp_path.glob("*partial*"))


def test_initialisation_is_seeded():
    m = build_model("cnn6", (1, 32, 32), 10)
    a = m.create_parameters(np.random.RandomState(3))
    b = m.create_parameters(np.random.RandomState(3))
    c = m.create_parameters(np.random.RandomState(4))
    assert np.array_equal(a["conv1/conv/W"].d, b["conv1/conv/W"].d)
    assert not np.array_equal(a["conv1/conv/W"].d, c["conv1/conv/W"].d)


def test_corrupt_parameter_file_is_refused_cleanly(tmp_path):
    bad = tmp_path / "final.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(UserError, match=r"final.h5 is unreadable .*delete it and rerun"):
        load_params(bad)
    with pytest.raises(UserError, match="is missing"):
        load_params(tmp_path / "none.h5")

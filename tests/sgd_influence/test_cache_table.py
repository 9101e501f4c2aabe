"""The paper's Table 1 (cache sizes): the arithmetic, the driver, and a run's table."""
import math

import numpy as np
import pandas as pd
import pytest

import cache_table as cache_table_cli
from sgd_influence.cache_table import SETTINGS, cache_table, cache_table_rows, cnn6_file_bytes


def test_cache_table_rows_arithmetic():
    table = cache_table_rows(1_241_600, 50_000, 32, 20).set_index("method")
    assert list(table.index) == ["All parameters", "Hara", "Ours"]
    assert (table.loc["Hara", "files"], table.loc["All parameters", "files"]) == (1563, 1563 * 20)
    assert table.loc["Hara", "bytes"] == 1563 * 1_241_600
    assert table.loc["Hara", "GB"] == pytest.approx(1.9406208)
    assert table.loc["Ours", "GB"] == pytest.approx(1.236e-3, rel=0.01)
    assert table.loc["Hara", "GB"] == pytest.approx(1.932, rel=0.01)
    assert table.loc["All parameters", "GB"] == pytest.approx(38.64, rel=0.01)
    cifar = cache_table_rows(1_241_600, 40_000, 32, 20).set_index("method")
    assert cifar.loc["Hara", "files"] == 1250 and cifar.loc["Hara", "GB"] == pytest.approx(1.545, rel=0.01)
    assert cache_table_rows(100, 33, 32, 1).set_index("method").loc["Hara", "files"] == 2   # ceil


def test_cache_table_cli_measures_cnn6(capsys):
    sizes = {key: cnn6_file_bytes(shape) for _, key, shape in SETTINGS}
    assert sizes["mnist"] == pytest.approx(1.236e6, rel=0.01)
    assert sizes["cifar10"] > sizes["mnist"]                     # 576 more weights in conv1
    table = cache_table_cli.build_table(sizes, 32, 20)
    mnist = table[table.dataset == "MNIST"].set_index("method")
    assert mnist.loc["Ours", "GB"] == pytest.approx(0.001236, rel=0.01)
    assert mnist.loc["Hara", "GB"] == pytest.approx(1.932, rel=0.01)
    assert np.all(np.abs(table["ratio"] - 1) < 0.01)
    assert "Hara_all_epochs" not in set(table.method)  # the reproduction report's Table 1 is the paper's
    replay = cache_table_cli.build_table(sizes, 32, 20, with_replay=True)
    row = replay[replay.dataset == "MNIST"].set_index("method").loc["Hara_all_epochs"]
    assert row.files == 20 and row.bytes == 20 * sizes["mnist"] and row.stored == "theta x k"
    assert np.isnan(row.paper_GB) and list(replay.method[:4]) == ["All parameters", "Hara", "Hara_all_epochs", "Ours"]
    assert cache_table_cli.main([]) == 0
    out = capsys.readouterr().out
    assert "1.932" in out and "38.64" in out and "Hara" in out and "CIFAR-10" in out and "Hara_all_epochs" in out


def test_cache_table_cli_param_file_and_write(tmp_path, capsys):
    f = tmp_path / "p.h5"
    f.write_bytes(b"\0" * 1_236_000)
    assert cache_table_cli.main(["--param-file", str(f), "--csv", str(tmp_path / "t.csv")]) == 0
    table = pd.read_csv(tmp_path / "t.csv")
    assert np.allclose(table[table.method == "Ours"]["ratio"], 1.0)
    assert cache_table_cli.run_main(cache_table_cli.main, ["--param-file", str(tmp_path / "missing.h5")]) == 2
    assert "not found" in capsys.readouterr().err
    measured = pd.DataFrame({"method": ["Hara", "Ours"], "seed": [0, 0], "files": [3, 1], "bytes": [300, 100]})
    out = cache_table(f.stat().st_size, "digits", 1197, 32, 20, measured)
    out.to_csv(tmp_path / "cache_table.csv", index=False)
    saved = pd.read_csv(tmp_path / "cache_table.csv")
    assert list(saved["method"]) == ["All parameters", "Hara", "Ours"] and saved["dataset"][0] == "digits"
    assert saved.loc[1, "files"] == math.ceil(1197 / 32) and saved.loc[2, "measured_bytes"] == 100
    assert math.isnan(saved.loc[0, "measured_bytes"]) and len(out) == 3

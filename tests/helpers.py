"""Helpers shared by the tests: running a driver as a user does, and small models with data."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from models import build_model
from models.autodiff import Learner, vnorm

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT, script="eval_sgd_influence.py"):
    """The driver as a user runs it, quiet and with one worker unless ``args`` say otherwise (a later flag wins)."""
    return subprocess.run([sys.executable, str(ROOT / script), "--no-progress", "-j", "1", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(res, *fragments):
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]



def make(name, shape=(1, 32, 32), classes=10, seed=0, scale=None):
    m = build_model(name, shape, classes)
    p = m.create_parameters(np.random.RandomState(seed))
    if scale is not None:
        rs = np.random.RandomState(seed + 100)
        for v in p.values():
            if v.need_grad:
                v.d = rs.randn(*v.shape) * scale
    return Learner(m, p)


def data(n, shape=(1, 32, 32), classes=10, seed=1):
    rs = np.random.RandomState(seed)
    return rs.randn(n, *shape).astype(np.float32), rs.randint(0, classes, n)


def rand_vec(learner, seed=2, unit=False):
    rs = np.random.RandomState(seed)
    v = {k: rs.randn(*p.shape) for k, p in learner.trainable.items()}
    if unit:
        n = vnorm(v)
        v = {k: a / n for k, a in v.items()}
    return v



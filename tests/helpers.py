"""Helpers shared by the tests: running a driver as a user does, and small models with data."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from models import build_model
from models.autodiff import Learner, vnorm

ROOT = Path(__file__).resolve().parents[1]
#: The real MNIST files (the four ``*-ubyte.gz``): ``$DATA_CLEANSING_MNIST``, else the shared folder
#: beside the repository; the tests that need them are skipped where they are missing.
MNIST_ENV = "DATA_CLEANSING_MNIST"
MNIST_DIR = Path(os.environ.get(MNIST_ENV) or ROOT.parent / "shared" / "datasets" / "mnist")


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



def exit2(res, *fragments):
    """Exit code 2 (a user error) with exactly one line on stderr holding ``fragments``."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert_one_line_error(res, *fragments)


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run folder (links, times and modes as they are)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def digits_arrays(n_train=150, n_val=50, n_test=60):
    """The digits splits of seed 0 as the (images, labels) pairs the Python API takes."""
    from datasets import load_dataset
    d = load_dataset("digits", 0, n_train=n_train, n_val=n_val, n_test=n_test)
    return [(s.images, s.labels) for s in (d.train, d.val, d.test)]


def two_layer_tanh(x, train):
    """Not a built-in network: 32 tanh units (the built-in mlp uses relu and other sizes)."""
    import nnabla as nn
    import nnabla.functions as F
    import nnabla.parametric_functions as PF
    with nn.parameter_scope("hidden"):
        h = F.tanh(PF.affine(x, 32))
    with nn.parameter_scope("out"):
        return PF.affine(h, 10)


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



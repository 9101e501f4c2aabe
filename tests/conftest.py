import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MNIST_DIR = ROOT.parent / "shared" / "datasets" / "mnist"

import cleansing.cli  # noqa: E402,F401  (quiets nnabla's INFO logging before nnabla is imported)


@pytest.fixture(scope="session")
def mnist_dir():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return str(MNIST_DIR)

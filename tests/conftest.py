import inspect
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cleansing.cli  # noqa: E402,F401  (quiets nnabla's INFO logging before nnabla is imported)
from tests.helpers import MNIST_DIR, MNIST_ENV  # noqa: E402


@pytest.fixture(scope="session")
def mnist_dir():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {MNIST_DIR} (set ${MNIST_ENV})")
    return str(MNIST_DIR)


# ---------------------------------------------------------------------------- the e2e marker
def _names(code: types.CodeType) -> set:
    """The global and attribute names ``code`` and the functions nested in it refer to."""
    out = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _names(const)
    return out


def runs_a_driver(func, seen: set = frozenset()) -> bool:
    """Whether ``func``, or a function of the test suite it calls (by name, at any depth), starts a
    driver in a subprocess: it calls ``run_cli`` or runs ``sys.executable`` with ``subprocess``."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None or func in seen:
        return False
    names = _names(code)
    if "run_cli" in names or {"subprocess", "executable"} <= names:
        return True
    seen = seen | {func}
    module_globals = getattr(func, "__globals__", {})
    for name in names:
        other = module_globals.get(name)
        if inspect.isfunction(other) and (other.__module__ or "").startswith("tests"):
            if runs_a_driver(other, seen):
                return True
    return False


def pytest_collection_modifyitems(config, items):
    """Mark ``e2e`` every test that runs a driver in a subprocess, itself or through a fixture of the
    suite (``pytest -m "not e2e"``: the fast loop)."""
    for item in items:
        funcs = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info is not None else ()):
            funcs += [d.func for d in defs if (getattr(d.func, "__module__", "") or "").startswith("tests")]
        if any(f is not None and runs_a_driver(f) for f in funcs):
            item.add_marker(pytest.mark.e2e)

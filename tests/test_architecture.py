"""The packages form layers without cycles: each imports only packages of lower layers (imports
inside functions included), so the estimators never import each other and the generic pipeline
knows none of them."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package (or top-level module) -> layer; a package may import only its own modules and packages
#: of a strictly lower layer
LAYERS = {
    "common": 0,
    "datasets": 1,
    "models": 1,
    "cleansing": 2,
    "sgd_influence": 3,
    "influence_functions": 3,
    "turnover_dropout": 3,
    "tracin": 3,
    "estimators": 4,
    "reproduction": 5,
}


def imported_packages(path: Path, package: str) -> set:
    """The project packages ``path`` imports, at any depth of the file (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level > 0 else [node.module or ""]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in LAYERS)
    return found - {package}


def modules():
    for package in LAYERS:
        folder = ROOT / package
        files = sorted(folder.rglob("*.py")) if folder.is_dir() else [ROOT / f"{package}.py"]
        for f in files:
            yield package, f


def test_every_package_imports_only_lower_layers():
    bad = [f"{f.relative_to(ROOT)} ({package}, layer {LAYERS[package]}) imports {other} (layer {LAYERS[other]})"
           for package, f in modules() for other in sorted(imported_packages(f, package))
           if LAYERS[other] >= LAYERS[package]]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_upward_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import numpy\nfrom . import sibling\n\ndef late():\n    from estimators import REGISTRY\n"
                 "    import sgd_influence.infl\n")
    assert imported_packages(f, "cleansing") == {"estimators", "sgd_influence"}


@pytest.mark.parametrize("package", [p for p in LAYERS if p != "estimators"])
def test_every_layer_is_a_package_that_exists(package):
    assert (ROOT / package / "__init__.py").is_file()


def module_imports(path: Path, package: str) -> set:
    """The modules of ``package`` that ``path`` imports, at any depth (``from . import x``,
    ``from .x import y``, ``from package.x import y``, ``import package.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.level == 0 and (node.module or "").startswith(package + "."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(package + "."))
    return found - {path.stem}


def cycles(graph: dict) -> list:
    """Every module that can reach itself through ``graph`` (module -> imported modules)."""
    def reach(start):
        seen, stack = set(), list(graph.get(start, ()))
        while stack:
            m = stack.pop()
            if m not in seen:
                seen.add(m)
                stack.extend(graph.get(m, ()))
        return seen
    return sorted(m for m in graph if m in reach(m))


@pytest.mark.parametrize("package", [p for p in LAYERS if (ROOT / p).is_dir()])
def test_no_import_circle_inside_a_package(package):
    """Inside a package too, imports go one way (imports inside functions included): e.g. the generic
    executor ``cleansing.graph`` never imports the pipeline that uses it (issue 33)."""
    files = {f.stem: f for f in (ROOT / package).glob("*.py") if f.stem != "__init__"}
    graph = {m: module_imports(f, package) & set(files) for m, f in files.items()}
    assert not cycles(graph), {m: sorted(graph[m]) for m in cycles(graph)}


def test_the_circle_checker_sees_a_circle_through_a_late_import(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import a\n")
    (tmp_path / "c.py").write_text("from pkg.a import y\n")
    graph = {f.stem: module_imports(f, "pkg") for f in tmp_path.glob("*.py")}
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a"}} and cycles(graph) == ["a", "b"]


@pytest.mark.parametrize("folder", ["bench", "reproduction"])
def test_bench_and_the_study_import_nothing_from_the_tests(folder):
    """Benchmarks and the study build on the packages, never on the test suite (issue 33)."""
    bad = []
    for f in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests":
                bad.append(f"{f.relative_to(ROOT)} imports {node.module}")
    assert not bad, "\n".join(bad)


def test_no_package_imports_a_top_level_script():
    """The drivers and tools at the top (eval_*.py, cache_table.py, reproduce.py, figure5.py) are thin
    ends: packages never import them (``estimators.py``, the registry, is a layer of its own)."""
    scripts = {f.stem for f in ROOT.glob("*.py")} - set(LAYERS)
    bad = []
    for _, f in modules():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{f.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] in scripts]
    assert scripts >= {"cache_table", "reproduce", "eval_sgd_influence"} and not bad, "\n".join(bad)


def private_uses(source: str, name: str = "<source>") -> list:
    """Where ``source`` reaches into another module's or object's private names: ``from m import _x``
    and ``something._x`` (an attribute of anything but ``self``/``cls``; dunder names are public)."""
    def private(n: str) -> bool:
        return n.startswith("_") and not (n.startswith("__") and n.endswith("__"))

    bad = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.ImportFrom):
            bad += [f"{name}:{node.lineno} imports {node.module}.{a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls"):
                bad.append(f"{name}:{node.lineno} reads {owner or '(expression)'}.{node.attr}")
    return bad


#: Known exceptions, each with its reason: (file, private name). None at present.
PRIVATE_USE_EXCEPTIONS: set = set()


def script_files() -> list:
    """The scripts: the top-level drivers and tools, bench/ and scripts/."""
    files = [f for f in ROOT.glob("*.py") if f.stem not in LAYERS or f.stem == "estimators"]
    return sorted(files + list((ROOT / "bench").glob("*.py")) + list((ROOT / "scripts").glob("*.py")))


def test_scripts_and_bench_use_public_names_only():
    """The drivers, tools and benchmarks build on the packages' public names (issue 33): a private
    name may change with its module, so a script that reaches in breaks silently."""
    bad = []
    for f in script_files():
        rel = str(f.relative_to(ROOT))
        bad += [b for b in private_uses(f.read_text(), rel)
                if not any(b.startswith(rel + ":") and b.endswith("." + n) for r, n in PRIVATE_USE_EXCEPTIONS
                           if r == rel)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source,found", [
    ("from models.autodiff import _Jvp\n", ["x.py:1 imports models.autodiff._Jvp"]),
    ("import cleansing.graph as g\ng._quiet_dask()\n", ["x.py:2 reads g._quiet_dask"]),
    ("def f(learner):\n    return learner._stats(False)\n", ["x.py:2 reads learner._stats"]),
    ("def f(ek):\n    return make(ek)._graph(3)\n", ["x.py:2 reads (expression)._graph"]),
    ("class A:\n    def f(self):\n        return self._x, cls._y, self.__dict__, A.__name__\n", []),
    ("from models.autodiff import Jvp, __version__\n", []),
])
def test_the_public_name_checker_sees_a_reach_in(source, found):
    assert private_uses(source, "x.py") == found


#: the estimator packages: they plug into the pipeline through ``cleansing.estimator`` alone
ESTIMATOR_PACKAGES = [p for p, layer in LAYERS.items() if layer == 3]


def interface_violations(source: str, name: str = "<source>") -> list:
    """What an estimator package's module takes from ``cleansing`` besides the interface
    ``cleansing.estimator``, and where it reads a run configuration (``.cfg``) instead of the
    settings it is given (``Trial.settings``, ``RunSettings``)."""
    bad = []
    for node in ast.walk(ast.parse(source, name)):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        bad += [f"{name}:{node.lineno} imports {m}" for m in modules
                if m.split(".")[0] == "cleansing" and m != "cleansing.estimator"]
        if isinstance(node, ast.Attribute) and node.attr == "cfg":
            bad.append(f"{name}:{node.lineno} reads .cfg")
    return bad


def test_estimator_packages_use_the_interface_only():
    """Estimator packages import from the pipeline only ``cleansing.estimator`` (the interface: its
    types, flag types, ``RunSettings`` and the pieces it re-exports) and never read the whole run
    configuration (issue 33)."""
    bad = [v for p in ESTIMATOR_PACKAGES for f in sorted((ROOT / p).glob("*.py"))
           for v in interface_violations(f.read_text(), str(f.relative_to(ROOT)))]
    assert ESTIMATOR_PACKAGES == ["sgd_influence", "influence_functions", "turnover_dropout", "tracin"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source,found", [
    ("from cleansing.train import run_steps\n", ["x.py:1 imports cleansing.train"]),
    ("import cleansing.outdir\n", ["x.py:1 imports cleansing.outdir"]),
    ("def f(trial):\n    return trial.cfg.train.augment\n", ["x.py:2 reads .cfg"]),
    ("from cleansing.estimator import Estimator, run_steps\n", []),
])
def test_the_interface_checker_sees_each_violation(source, found):
    assert interface_violations(source, "x.py") == found


def test_explaining_is_declared_not_inferred():
    """An estimator explains test errors exactly when it says so (``explains_errors``) and implements
    ``explain``; the registry's list of explaining methods is the documented one."""
    from cleansing.estimator import Estimator
    from estimators import REGISTRY
    for e in REGISTRY:
        assert e.explains_errors == (type(e).explain is not Estimator.explain), e.name
    assert [e.name for e in REGISTRY if e.explains_errors] == ["Hara", "Ours", "Hara_all_epochs", "Turnover_dropout"]

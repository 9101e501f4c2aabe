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

"""The output folder: what the tool owns in it, its manifest, its lock, and ``--overwrite``.

Contract (README "Reliability"):

* The tool owns ``manifest.json``, ``.lock`` and the folders ``OWNED_DIRS`` of an output folder,
  and in them only files of the kinds it writes (``OWNED_SUFFIXES``, and ``*.partial-<pid>*``
  temporaries). It never deletes anything else: ``--overwrite`` refuses a folder that holds no
  manifest of this tool, the current folder or one above it, the home folder or one above it,
  the repository or one above it, a folder that holds the input data, and an owned folder that
  holds a file of another kind.
* ``manifest.json`` records every setting that changes a result; each key has a *scope*, the
  outputs it invalidates (``SCOPES``). A rerun with other values stops with the one-line list of
  differences; with ``--overwrite`` only the outputs in the scopes of the changed keys are removed
  (a changed test CSV recomputes the retrainings and reports, not the training).
* One run at a time: the running process holds an advisory lock (``fcntl.flock``) on ``.lock``.
* No file is written or deleted through a symbolic link the tool did not make: ``check_links``
  refuses a folder whose manifest, lock or owned folders hold one (the tool makes none), and the
  lock file is opened with ``O_NOFOLLOW``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from common.errors import UserError
from common.fileio import PARTIAL_TAG, write_text_atomic

from .paths import VALIDATION_GRAD

MANIFEST = "manifest.json"
LOCK = ".lock"
OWNED_DIRS = ("weights", "influence", "score", "summary", "fig", "logs", "cleansed", "images")
OWNED_SUFFIXES = (".h5", ".npz", ".csv", ".png", ".json", ".nnp")
REPO_ROOT = Path(__file__).resolve().parents[1]

#: scope name -> which owned files (path relative to the output folder) it invalidates.
#: "train": everything; "influence": all but the training and exported images (the validation
#: gradient stored beside the training is the influence's); "eval": the retrainings, validation
#: truths and reports (training and influence CSVs are kept).
SCOPES: Dict[str, Callable[[PurePosixPath], bool]] = {
    "train": lambda rel: True,
    "influence": lambda rel: rel.parts[0] not in ("weights", "images") or rel.name == VALIDATION_GRAD,
    "eval": lambda rel: rel.parts[0] not in ("weights", "images", "influence")
    and not rel.name.startswith("timings_seed_"),
}
SCOPE_TEXT = {"train": "everything", "influence": "the influence scores and everything after them",
              "eval": "the retrainings and reports"}


def method_scope(prefix: str, weights_tag: Optional[str] = None) -> Callable[[PurePosixPath], bool]:
    """Scope of an estimator's own options: its influence and score folders (names starting with
    ``prefix``) and, with ``weights_tag``, its own trained networks under ``weights/``."""
    def hit(rel: PurePosixPath) -> bool:
        if rel.parts[0] in ("influence", "score") and len(rel.parts) > 1:
            return rel.parts[1].startswith(prefix)
        return weights_tag is not None and rel.parts[0] == "weights" and any(
            p.startswith(weights_tag) for p in rel.parts[1:-1])
    return hit


def _is_owned_file(rel: PurePosixPath) -> bool:
    return rel.suffix in OWNED_SUFFIXES or PARTIAL_TAG + "-" in rel.name


def check_links(root: Path) -> None:
    """Refuse (one-line UserError) an output folder whose ``manifest.json``, ``.lock``, owned folders
    or anything inside them is a symbolic link: the tool makes none, and writing or deleting through
    one would reach files outside the folder. The one place the folder is checked for links."""
    tops = [root / MANIFEST, root / LOCK] + [root / d for d in OWNED_DIRS]
    for top in tops:
        found = top if top.is_symlink() else None
        if found is None and top.is_dir():
            for dirpath, dirnames, filenames in os.walk(top):
                found = next((Path(dirpath) / n for n in dirnames + filenames
                              if os.path.islink(os.path.join(dirpath, n))), None)
                if found is not None:
                    break
        if found is not None:
            raise UserError(f"{found} is a symbolic link (to {os.readlink(found)}), which this tool never makes; "
                            f"it writes nothing through links: remove the link or choose another -o")


def owned_files(root: Path) -> List[PurePosixPath]:
    """Every file the tool wrote under ``root`` (relative paths); a UserError naming the first file
    of another kind found inside an owned folder (the tool deletes nothing it did not write)."""
    check_links(root)
    out = []
    for name in (MANIFEST, LOCK):
        if (root / name).is_file():
            out.append(PurePosixPath(name))
    for d in OWNED_DIRS:
        top = root / d
        if top.exists() and not top.is_dir():
            raise UserError(f"{top} is not a folder this tool wrote; move it away or choose another -o")
        for dirpath, _, filenames in os.walk(top):
            for n in sorted(filenames):
                f = Path(dirpath) / n
                rel = PurePosixPath(f.relative_to(root).as_posix())
                if not _is_owned_file(rel):
                    raise UserError(f"{f} was not written by this tool; move it out of {root} or choose "
                                    f"another -o (--overwrite deletes only what the tool wrote)")
                out.append(rel)
    return out


def remove_outputs(root: Path, hit: Callable[[PurePosixPath], bool]) -> int:
    """Delete the owned files under ``root`` that ``hit`` selects (never the manifest or the lock),
    then the owned folders left empty; returns how many files."""
    files = [rel for rel in owned_files(root) if rel.parts[0] in OWNED_DIRS and hit(rel)]
    for rel in files:
        with contextlib.suppress(FileNotFoundError):
            (root / rel).unlink()
    for d in OWNED_DIRS:
        for dirpath, _, _ in sorted(os.walk(root / d), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)  # only succeeds on an empty folder
    return len(files)


def _contains(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


def check_deletable(root: Path, inputs: Iterable[Path]) -> None:
    """Refuse to delete in ``root`` when it is a folder no run output should be: the current folder
    or above, the home folder or above, the repository or above, or a folder holding an input."""
    real = root.resolve()
    guarded = [(Path.cwd().resolve(), "the current folder"), (Path.home().resolve(), "the home folder"),
               (REPO_ROOT, "this tool's repository")]
    for g, what in guarded:
        if _contains(real, g):
            raise UserError(f"refusing to delete in {root}: it is {what} or holds it; "
                            f"choose a folder of its own with -o")
    for p in inputs:
        if _contains(real, Path(p).resolve()):
            raise UserError(f"refusing to delete in {root}: it holds the input data {p}; choose another -o")


def check_output_arg(out: str, overwrite: bool) -> Path:
    """The -o path, refused when empty, a regular file, or (with --overwrite) a symbolic link."""
    if not str(out).strip():
        raise UserError("-o/--output is empty; give an output folder")
    root = Path(out)
    if root.is_symlink() and overwrite:
        raise UserError(f"-o {root} is a symbolic link (to {os.readlink(root)}); give the folder itself, "
                        f"or another -o, with --overwrite")
    if root.exists() and not root.is_dir():
        raise UserError(f"-o {root} is an existing file, not a folder; choose a folder")
    return root


def read_manifest(path: Path) -> dict:
    """The manifest as a dict of JSON scalars and lists; a UserError when damaged."""
    hint = f"restore it, or move {path.parent} away and rerun"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({type(exc).__name__}); {hint}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object; {hint}")
    return data


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def manifest_diff(old: dict, wanted: dict, path: Path) -> Dict[str, Tuple[object, object]]:
    """Keys whose recorded value differs from ``wanted``; a UserError when a recorded value has a
    type the tool never writes for that key (the file was edited or damaged)."""
    diff = {}
    for k, v in wanted.items():
        o = old.get(k)
        if o is not None and v is not None and _kind(o) != _kind(v):
            raise UserError(f"{path}: {k} is {o!r} ({_kind(o)}), where this tool writes a {_kind(v)}; "
                            f"the file was edited or damaged: restore it, or move {path.parent} away and rerun")
        if (list(o) if isinstance(o, (list, tuple)) else o) != (list(v) if isinstance(v, tuple) else v):
            diff[k] = (o, v)
    return diff


def write_manifest(path: Path, manifest: dict) -> None:
    write_text_atomic(path, json.dumps(manifest, indent=1, sort_keys=True))


class FolderLock:
    """Advisory lock on ``<root>/.lock`` held while a run writes to ``root``."""

    def __init__(self, root: Path):
        self.path = root / LOCK
        self.fh = None

    def acquire(self) -> FolderLock:
        """Take the lock (never through a symbolic link: ``O_NOFOLLOW``); a one-line UserError when
        another run holds it or the file cannot be opened."""
        where = self.path.parent
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            what = {errno.ELOOP: "is a symbolic link", errno.EISDIR: "is a folder"}.get(exc.errno)
            if what:
                raise UserError(f"{self.path} {what}, not this tool's lock file; remove it or choose "
                                f"another -o") from None
            raise UserError(f"cannot write to output folder {where} ({exc.strerror}); choose another -o") from None
        fh = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = fh.read().strip() or "unknown"
            fh.close()
            raise UserError(f"output folder {where} is in use by another run (process {pid}); "
                            f"wait for it to finish or choose another -o") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None

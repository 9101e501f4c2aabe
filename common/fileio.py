"""Atomic file writing: nothing half-written is ever taken as complete.

Every output is written to a temporary name in the same folder and renamed over the final
name only when complete (``os.replace`` is atomic on POSIX), so a killed run leaves at most
a ``*.partial*`` file that no reader looks at.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]
PARTIAL_TAG = ".partial"


def partial_path(path: PathLike) -> Path:
    """Temporary sibling of ``path`` that keeps its extension (nnabla picks formats by it)."""
    p = Path(path)
    return p.with_name(f"{p.stem}{PARTIAL_TAG}-{os.getpid()}{p.suffix}")


_PARTIAL = re.compile(re.escape(PARTIAL_TAG) + r"-(\d+)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partials(root: PathLike) -> int:
    """Delete the ``*.partial-<pid>*`` files under ``root`` whose writing process is gone (left by a
    killed run); returns how many. Files of running processes are kept."""
    removed = 0
    for f in Path(root).rglob(f"*{PARTIAL_TAG}-*"):
        m = _PARTIAL.search(f.name)
        if m and f.is_file() and not _alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on error removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: PathLike, frame: pandas.DataFrame) -> None:  # noqa: F821
    """Write a pandas DataFrame as CSV (no index column) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)

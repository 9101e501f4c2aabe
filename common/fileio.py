"""Atomic file writing: nothing half-written is ever taken as complete.

Every output is written to a temporary name in the same folder and renamed over the final
name only when complete (``os.replace`` is atomic on POSIX), so a killed run leaves at most
a ``*.partial*`` file that no reader looks at. A full disk (or quota) while writing becomes a
``UserError`` that names the file.

Fault injection (``bench/fault_injection.py``, ``tests/test_resume.py``): with the environment
variables ``DATA_CLEANSING_KILL_ON=TEXT`` (and ``DATA_CLEANSING_KILL_NTH=J``, default 1) the process
kills itself with SIGKILL inside its J-th atomic write of a path containing TEXT, after the
temporary file is complete and before the rename; ``DATA_CLEANSING_WRITE_LOG=F`` appends the path
of every completed write to F.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from .errors import UserError

PathLike = Union[str, "os.PathLike[str]"]
PARTIAL_TAG = ".partial"


def partial_path(path: PathLike) -> Path:
    """Temporary sibling of ``path`` that keeps its extension (nnabla picks formats by it)."""
    p = Path(path)
    return p.with_name(f"{p.stem}{PARTIAL_TAG}-{os.getpid()}{p.suffix}")




def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partials(root: PathLike, folders: Iterable[str], suffixes: Iterable[str]) -> int:
    """Delete the temporary files a killed run left: names exactly ``<stem>.partial-<pid><suffix>``
    (``partial_path``) with a ``suffix`` the tool writes, whose writing process is gone, directly in
    ``root`` or anywhere under its ``folders`` (the places the tool writes); returns how many. Files
    of running processes, other names and other places are kept."""
    exact = re.compile(r"^.+" + re.escape(PARTIAL_TAG) + r"-(\d+)(" + "|".join(map(re.escape, suffixes)) + r")$")
    root = Path(root)
    candidates = list(root.glob(f"*{PARTIAL_TAG}-*"))
    for d in folders:
        if (root / d).is_dir() and not (root / d).is_symlink():
            candidates += (root / d).rglob(f"*{PARTIAL_TAG}-*")
    removed = 0
    for f in candidates:
        m = exact.match(f.name)
        if m and f.is_file() and not f.is_symlink() and not _alive(int(m.group(1))):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed += 1
    return removed


_MATCHES = [0]
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
MIN_FREE = 4 << 20  # bytes that must be free before a write starts


def _fault_point(final: Path) -> None:
    target = os.environ.get("DATA_CLEANSING_KILL_ON")
    if target and target in str(final):
        _MATCHES[0] += 1
        if _MATCHES[0] == int(os.environ.get("DATA_CLEANSING_KILL_NTH", "1")):
            # DATA_CLEANSING_KILL_SIGNAL=INT: a Ctrl-C at that moment instead of a kill
            sig = signal.SIGINT if os.environ.get("DATA_CLEANSING_KILL_SIGNAL") == "INT" else signal.SIGKILL
            os.kill(os.getpid(), sig)


def _log_write(final: Path) -> None:
    log = os.environ.get("DATA_CLEANSING_WRITE_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {final}\n")


def disk_full_error(path: PathLike, exc: BaseException) -> Optional[UserError]:
    """The one-line error for a write that failed on a full disk (or quota), else None. Some
    writers (h5py) lose the errno, so a write failing with under 1 MiB free counts as well."""
    code = getattr(exc, "errno", None)
    full = code in DISK_FULL
    if not full and isinstance(exc, (OSError, RuntimeError)):
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(Path(path).parent).free < (1 << 20)
    if not full:
        return None
    return UserError(f"no space left on the device while writing {path}; free some space (or choose another -o) "
                     f"and rerun the same command to continue")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on error removed."""
    final = Path(path)
    tmp = partial_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(final.parent).free < MIN_FREE:  # before a writer that might crash on it (h5py)
            raise OSError(errno.ENOSPC, "less than 4 MiB free", str(final.parent))
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _fault_point(final)
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        full = disk_full_error(final, exc)
        if full is not None:
            raise full from None
        raise
    _log_write(final)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: PathLike, frame: pandas.DataFrame) -> None:  # noqa: F821
    """Write a pandas DataFrame as CSV (no index column) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_csv_exact(path: PathLike, **kwargs) -> pandas.DataFrame:  # noqa: F821
    """``pandas.read_csv`` that reads every float back to the bits ``write_csv_atomic`` wrote it from
    (pandas writes the shortest repr; its default parser can land one ulp away)."""
    import pandas as pd
    return pd.read_csv(path, float_precision="round_trip", **kwargs)

"""Where dataset files are looked for, how they are verified, and how they are downloaded.

Folders: the ``data_dir`` argument if given, else ``$DATA_CLEANSING_DATA_DIR``, else the cache
folder ``~/.cache/nnabla_data_cleansing/<name>`` (``$DATA_CLEANSING_CACHE`` replaces the cache
root). A given folder (argument or variable) must already hold the files, either directly or
in a ``<name>`` subfolder; nothing is downloaded into it. Only the cache folder is downloaded
into, atomically, after the download is verified; a present and verified file is never fetched
again. Verification (size and md5) is memoised per file and process.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from common.fileio import atomic_path
from datasets.base import DatasetError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "DATA_CLEANSING_DATA_DIR"
CACHE_ENV = "DATA_CLEANSING_CACHE"
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20
_VERIFIED: set = set()


class ContentError(DatasetError):
    """A file's content is wrong; ``detail`` says how, without the path or the advice."""

    def __init__(self, path: Path, detail: str, advice: str = "delete it and put a correct copy there"):
        super().__init__(f"{path}: {detail}; {advice}")
        self.detail = detail


@dataclass(frozen=True)
class FileCheck:
    """Expected size in bytes (None: not checked) and md5 of a file's content."""

    size: Optional[int]
    md5: str


@dataclass(frozen=True)
class Location:
    """Folders searched for a dataset's files; ``cache`` is set when downloads are allowed."""

    folders: tuple
    cache: Optional[Path]

    @property
    def home(self) -> Path:
        """The folder a user is told to put missing files in."""
        return self.folders[0]


def cache_root() -> Path:
    """Root of the download cache: ``$DATA_CLEANSING_CACHE`` or ~/.cache/nnabla_data_cleansing."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nnabla_data_cleansing"


def locate(name: str, data_dir: Optional[str]) -> Location:
    """Folders to search for dataset ``name`` (see module doc for the order)."""
    given = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if given is not None:
        base = Path(given).expanduser().resolve()
        return Location((base, base / name), None)
    cache = (cache_root() / name).expanduser().resolve()
    return Location((cache,), cache)


def find_file(location: Location, names: Sequence[str]) -> Optional[Path]:
    """First existing file among ``names`` (alternatives, in order) in the location's folders."""
    for folder in location.folders:
        for fname in names:
            path = folder / fname
            if path.is_file():
                return path
    return None


def _memo_key(path: Path, check: FileCheck) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, check)


def mismatch_error(path: Path, check: FileCheck, size: int, md5: str, what: str = "") -> ContentError:
    """One-line error for a file whose size or md5 is not the expected one."""
    expected = f"{check.size} B, md5 {check.md5}" if check.size is not None else f"md5 {check.md5}"
    return ContentError(path, f"wrong {what}content (expected {expected}; got {size} B, md5 {md5})",
                        "delete it and put a correct copy there (or let the tool download it again)")


def verify_bytes(data: bytes, check: FileCheck, path: Path, what: str = "") -> None:
    """Raise DatasetError unless ``data`` (the content read from ``path``) matches ``check``."""
    key = _memo_key(path, check)
    if key in _VERIFIED:
        return
    md5 = hashlib.md5(data).hexdigest()
    if (check.size is not None and len(data) != check.size) or md5 != check.md5:
        raise mismatch_error(path, check, len(data), md5, what)
    _VERIFIED.add(key)


def verify_file(path: Path, check: FileCheck) -> None:
    """Raise DatasetError unless the file's size and md5 match ``check`` (streamed, memoised)."""
    key = _memo_key(path, check)
    if key in _VERIFIED:
        return
    size = path.stat().st_size
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    if (check.size is not None and size != check.size) or digest.hexdigest() != check.md5:
        raise mismatch_error(path, check, size, digest.hexdigest())
    _VERIFIED.add(key)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def missing_error(dataset: str, fname: str, url: str, folder: Path, reason: str = "") -> DatasetError:
    """One-line error naming the missing file, where to get it, and the folder to put it in."""
    why = f"could not download it ({_one_line(reason)}); " if reason else ""
    return DatasetError(
        f"{dataset}: {fname} not found in {folder}; {why}download it from {url} and put it in "
        f"{folder} (or pass --data-dir with a folder that holds it)")


def _download_to(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def fetch(dataset: str, fname: str, urls: Sequence[str], dest: Path,
          verify: Callable[[Path], None]) -> Path:
    """Download ``fname`` to ``dest`` from the first URL that serves it, verified before it appears.

    ``verify(tmp_path)`` must raise ContentError on bad content; the partial file is then removed
    and the next URL tried. If no URL gave good content, raise a one-line DatasetError: the last
    content problem, or (offline, nothing served) the missing-file error naming the URL and folder.
    """
    if dest.is_file():
        return dest
    reasons, bad = [], None
    for url in urls:
        log.info("downloading %s from %s to %s", fname, url, dest.parent)
        try:
            with atomic_path(dest) as tmp:
                _download_to(url, tmp)
                verify(tmp)
            return dest
        except ContentError as exc:
            bad = DatasetError(f"{dataset}: {fname} downloaded from {url} is not the expected file "
                               f"({exc.detail}); nothing was kept: try again later, or download it yourself "
                               f"and put it in {dest.parent}")
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reasons.append(f"{url}: {exc}")
    if bad is not None:
        raise bad
    raise missing_error(dataset, fname, urls[0], dest.parent, "; ".join(reasons))


def archive_path(location: Location, dataset: str, fname: str, url: str,
                 check: Optional[FileCheck]) -> Path:
    """Path of a verified archive: found in the location, or downloaded into the cache."""
    path = find_file(location, (fname,))
    if path is None:
        if location.cache is None:
            raise missing_error(dataset, fname, url, location.home)
        verify = (lambda tmp: verify_file(tmp, check)) if check is not None else (lambda tmp: None)
        path = fetch(dataset, fname, [url], location.cache / fname, verify)
    if check is not None:
        verify_file(path, check)
    return path


def read_tar_members(path: Path, wanted: set) -> dict:
    """Bytes of the wanted members (full names) of a .tar.gz, in one streaming pass; nothing extracted."""
    found = {}
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(f"{path}: cannot read the archive ({_one_line(exc)}); "
                           "delete it and put a complete copy there") from None
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise DatasetError(f"{path}: archive lacks {', '.join(missing)}; delete it and put a complete copy there")
    return found

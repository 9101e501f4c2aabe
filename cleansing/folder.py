"""The output folder of a run: checked against the run's settings, locked while the run writes,
and left as found when a first run fails before its first task."""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import UserError
from common.fileio import remove_stale_partials

from . import compat
from .config import RunConfig
from .estimator import Registry, RunSettings
from .outdir import (
    LOCK,
    OWNED_DIRS,
    OWNED_SUFFIXES,
    SCOPE_TEXT,
    SCOPES,
    FolderLock,
    check_deletable,
    check_links,
    check_output_arg,
    manifest_diff,
    read_manifest,
    remove_outputs,
    write_manifest,
)
from .paths import RunPaths


@dataclass
class OutputFolder:
    """The checked output folder of a run: its paths, the lock this process holds on it, and
    whether this run created its manifest (a run that fails before any training then leaves the
    folder as it found it)."""

    paths: RunPaths
    lock: FolderLock
    created: bool
    made_dir: bool = False
    started: bool = False  # set when the first task starts: from then on a failure keeps the folder

    def close(self, failed: bool) -> None:
        """Release the lock; after a failed first run that started no task, remove what it wrote."""
        root = self.paths.root
        undo = failed and self.created and not self.started
        if undo:
            remove_outputs(root, SCOPES["train"])
            self.paths.manifest.unlink(missing_ok=True)
        self.lock.release()
        if undo:
            (root / LOCK).unlink(missing_ok=True)
            if self.made_dir and not any(root.iterdir()):
                root.rmdir()


def prepare_output(cfg: RunConfig, registry: Registry, overwrite: bool) -> OutputFolder:
    """Check (or start) the output folder: refuse links into elsewhere, lock it, compare its
    manifest with ``cfg``'s settings (refuse other settings; with ``overwrite`` remove only the
    outputs the changed settings invalidate), write the manifest, and delete the temporary files a
    killed run left behind. Called once every check that can refuse the run has passed
    (``pipeline.run_lifecycle``): nothing is deleted or recorded for a run that is then refused."""
    root = check_output_arg(cfg.out, overwrite)
    paths = RunPaths(root)
    if root.is_dir():
        check_links(root)
    wanted = cfg.manifest(registry)
    recorded: dict = {}
    created = made_dir = False
    if paths.manifest.is_file():
        lock = FolderLock(root).acquire()  # first: the folder may be in use by a running run
        try:
            old = read_manifest(paths.manifest)
            recorded = old
            old = compat.complete(old, wanted, cfg.manifest_defaults(registry), _option_keys(cfg, registry))
            diff = manifest_diff(old, wanted, paths.manifest)
            scopes = cfg.manifest_scopes(registry)
            if diff and not overwrite:
                what = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items())
                raise UserError(f"output folder {root} holds a run with other settings ({what}); use another -o "
                                f"or add --overwrite to recompute {_redo_text(diff, scopes)}")
            if diff:
                check_deletable(root, cfg.inputs())
                remove_outputs(root, lambda rel: any(scopes.get(k, SCOPES["train"])(rel) for k in diff))
        except BaseException:
            lock.release()
            raise
    elif root.exists() and any(root.iterdir()):
        raise UserError(f"output folder {root} is not empty and holds no manifest of this tool; "
                        f"choose a new or empty folder with -o (the tool never deletes files it did not write)")
    else:
        made_dir = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write to output folder {root} ({exc.strerror}); choose another -o") from None
        lock, created = FolderLock(root).acquire(), True
    wanted = {**recorded, **wanted}  # keys of estimators this run does not use stay as recorded
    try:
        write_manifest(paths.manifest, wanted)
    except OSError as exc:
        lock.release()
        raise UserError(f"cannot write to output folder {root} ({exc.strerror}); choose another -o") from None
    remove_stale_partials(root, OWNED_DIRS, OWNED_SUFFIXES)  # temporary files of a killed run
    return OutputFolder(paths, lock, created, made_dir)


def _redo_text(diff: dict, scopes: dict) -> str:
    """What --overwrite recomputes for these changed keys: the widest scope among them."""
    names = [next((n for n, s in SCOPES.items() if s is scopes.get(k, SCOPES["train"])), None) for k in diff]
    widest = next((n for n in SCOPES if n in names), None)
    if widest is not None:
        return SCOPE_TEXT[widest]
    return "the outputs of " + ", ".join(diff)


def _short(v) -> str:
    text = str(v)
    return text[:12] + "..." if len(text) > 15 else text


def _option_keys(cfg: RunConfig, registry: Registry) -> set:
    """The option keys of the run's estimators (an older manifest may lack them: ``compat.complete``)."""
    keys: set = set()
    for kind in registry.option_types(cfg.methods):
        keys.update(cfg.option(kind).manifest(RunSettings.of(cfg)))
    return keys

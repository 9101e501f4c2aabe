"""Running the study: one trial at a time through the project's pipeline (``RunConfig`` + ``run``),
then copying the trial's small results into the committed folder (and, if asked, committing them).

Two trees:

* the *run folder* ``<runs>/<experiment>/`` (outside the repository): the pipeline's whole output
  tree, weights included; resumable as every run of the project;
* the *committed folder* ``docs/reproduction/<scale>/runs/<experiment>/``: per trial only what the
  report needs (``manifest.json``, influence and score CSVs, ``logs/timings_seed_<k>.csv``,
  ``train_log/train_log_seed_<k>.csv``, turn-over dropout's loss checks, ``trials/seed_<k>.json``
  with the wall time of the last call and ``compute_s``, the sum of the trial's stage timings, which
  also counts the work of interrupted calls). A trial whose ``trials/seed_<k>.json`` is there is complete and is never
  recomputed, so a lost machine costs at most the trial in flight.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import pandas as pd

from cleansing.config import RunConfig, make_config
from cleansing.pipeline import run
from cleansing.train import TrainConfig
from estimators import REGISTRY

from .scales import Experiment, Scale

REPO = Path(__file__).resolve().parent.parent


def committed_root(scale: str, repo: Path = REPO) -> Path:
    """``docs/reproduction/<scale>``: the committed runs (``runs/``) and the report (``report/``)."""
    return repo / "docs" / "reproduction" / scale


def trial_done(committed: Path, exp: Experiment, seed: int) -> bool:
    """True when trial ``seed`` of ``exp`` has been copied completely (its marker file exists)."""
    return (committed / "runs" / exp.name / "trials" / f"seed_{seed}.json").is_file()


def dataset_of(exp: Experiment, runs: Path, data_dir: Optional[str]) -> str:
    """The ``-ds`` value of ``exp``: a built-in name, or the assembled domain-shift ``train.csv``."""
    if exp.dataset == "domain_shift":
        from .domain_shift import build_digits_to_mnist

        return str(
            build_digits_to_mnist(
                runs / "data" / f"digits_to_mnist_v{exp.n_val}_t{exp.n_test}",
                exp.n_val,
                exp.n_test,
                data_dir,
                exp.n_train,
            )
        )
    return exp.dataset


def run_folder(scale: Scale, exp: Experiment, runs: Path, seed: int) -> Path:
    """The run folder of trial ``seed``: ``<runs>/<experiment>``, or its ``seed_<k>`` with ``trial_folders``."""
    return runs / exp.name / f"seed_{seed}" if scale.trial_folders else runs / exp.name


def run_config(exp: Experiment, runs: Path, seed: int, data_dir: Optional[str],
               out: Optional[Path] = None) -> RunConfig:
    """The pipeline configuration of trial ``seed`` of ``exp`` (one trial per call, one process),
    written to ``out`` (default ``<runs>/<experiment>``)."""
    train = TrainConfig(model="cnn6", epochs=exp.epochs, batch_size=exp.batch_size, lr=exp.lr, augment=True)
    csv = exp.dataset == "domain_shift"
    common = dict(
        dataset=dataset_of(exp, runs, data_dir),
        out=str(out or runs / exp.name),
        train=train,
        n_trials=1,
        first_seed=seed,
        methods=tuple(exp.methods),
        remove=tuple(exp.remove),
        data_dir=None if csv else data_dir,
        n_train=None if csv else exp.n_train,
        n_val=None if csv else exp.n_val,
        n_test=None if csv else exp.n_test,
        jobs=1,
        show_progress=False,
        gallery=0,
        explain_max=0,
    )
    return make_config(REGISTRY, **common)


def copy_trial(exp: Experiment, runs: Path, committed: Path, seed: int, wall_s: float,
               src: Optional[Path] = None, cpu_s: Optional[float] = None,
               training_from: Optional[dict] = None, commit: Optional[str] = None) -> List[Path]:
    """Copy trial ``seed``'s small files from its run folder ``src`` (default ``<runs>/<experiment>``)
    to the committed folder (never weights); the marker ``trials/seed_<k>.json`` is written last, with
    the wall and CPU seconds of the trial's calls (``TrialClaim``) and, when its training was taken
    over from another trial (``reuse_training``), where from. ``commit``: the code's commit when the
    process started (default: now; a checkout moved while a trial ran must not be named). Returns the
    files written."""
    src, dst = src or runs / exp.name, committed / "runs" / exp.name
    files = [src / "manifest.json", src / "logs" / f"timings_seed_{seed}.csv"]
    files += sorted((src / "influence").glob(f"*/influence_*_{seed}.csv"))
    files += sorted((src / "score").glob(f"*/score_delete_worst_*_seed_{seed}.csv"))
    files += sorted((src / "summary").glob(f"turnover_*_{seed}.csv"))
    out = []
    for f in files:
        if not f.is_file():
            continue
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        out.append(target)
    log = src / "weights" / f"seed_{seed:02d}" / "train_log.csv"
    if log.is_file():
        target = dst / "train_log" / f"train_log_seed_{seed}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)
        out.append(target)
    timings = src / "logs" / f"timings_seed_{seed}.csv"
    compute_s = float(pd.read_csv(timings).seconds.sum()) if timings.is_file() else wall_s
    marker = dst / "trials" / f"seed_{seed}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "experiment": exp.name,
        "seed": seed,
        "wall_s": round(wall_s, 1),
        "compute_s": round(compute_s, 1),
        "commit": commit or code_commit(),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if cpu_s is not None:
        info["cpu_s"] = round(cpu_s, 1)
    if training_from:
        info["training_from"] = training_from
    marker.write_text(json.dumps(info, indent=1))
    out.append(marker)
    return out


def code_commit(repo: Path = REPO) -> str:
    """The commit of the code that runs: the last commit that changed a Python file (the study's own
    result commits change none), ``+dirty`` when tracked Python files differ from it."""
    head = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h", "--", "*.py"], capture_output=True,
                          text=True)
    dirty = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--", "*.py"], capture_output=True)
    return head.stdout.strip() + ("+dirty" if dirty.returncode else "")


def git_commit(paths: Iterable[Path], message: str, repo: Path = REPO, tries: int = 10) -> bool:
    """``git add`` + ``git commit`` of exactly ``paths`` (retried while another git holds the index
    lock); False when it did not commit, and at once for no paths (``git commit --`` without a path
    would commit whatever else is staged)."""
    rel = [str(Path(p).resolve().relative_to(repo.resolve())) for p in paths]
    if not rel:
        return False
    for i in range(tries):
        add = subprocess.run(["git", "-C", str(repo), "add", "--", *rel], capture_output=True, text=True)
        if add.returncode == 0:
            c = subprocess.run(
                ["git", "-C", str(repo), "commit", "-q", "-m", message, "--", *rel], capture_output=True, text=True
            )
            if c.returncode == 0:
                return True
            if "index.lock" not in c.stderr:
                return False
        time.sleep(3 + 3 * i)
    return False


class TrialClaim:
    """A non-blocking ``flock`` held while a process runs
    that trial, so that several ``reproduce.py`` processes share one scale without taking the same
    trial (``<runs>/.claims/<experiment>_seed_<k>``, beside the run folders, outside the repository).

    The file also keeps the wall and CPU seconds of the trial's calls so far (JSON ``wall_s``,
    ``cpu_s``; a file of one number, as written before, is its wall seconds): ``measure`` adds a
    call's, rewriting the totals every ``beat`` seconds while the call runs, so that a call killed
    outright (SIGKILL, a lost session) still counts up to its last beat."""

    def __init__(self, runs: Path, exp: Experiment, seed: int, beat: float = 60.0):
        self.path = runs / ".claims" / f"{exp.name}_seed_{seed}"
        self.fh = None
        self.mine = False
        self.beat = beat

    def __enter__(self) -> TrialClaim:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.mine = True
        except OSError:
            self.mine = False
        return self

    def totals(self) -> Dict[str, float]:
        """``{"wall_s", "cpu_s"}`` of this trial's calls so far."""
        self.fh.seek(0)
        text = self.fh.read().strip()
        try:
            d = json.loads(text) if text else {}
        except ValueError:
            d = {}
        if isinstance(d, (int, float)):
            d = {"wall_s": float(d)}
        return {"wall_s": float(d.get("wall_s", 0.0)), "cpu_s": float(d.get("cpu_s", 0.0))}

    def _write(self, totals: Dict[str, float]) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(json.dumps({k: round(v, 1) for k, v in totals.items()}) + "\n")
        self.fh.flush()

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Count the enclosed call's wall and CPU seconds (this process's, ``time.process_time``) into
        the totals: every ``beat`` seconds while it runs, and at its end however it ends."""
        before = self.totals()
        t0, c0 = time.time(), time.process_time()
        stop = threading.Event()
        lock = threading.Lock()

        def update() -> None:
            with lock:
                self._write({"wall_s": before["wall_s"] + time.time() - t0,
                             "cpu_s": before["cpu_s"] + time.process_time() - c0})

        def beats() -> None:
            while not stop.wait(self.beat):
                update()

        thread = threading.Thread(target=beats, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            update()

    def __exit__(self, *exc) -> None:
        self.fh.close()


#: In a trial's run folder: where its training came from (written by ``reuse_training``).
TRAINING_FROM = "training_from.json"


def reuse_training(out: Path, source_runs: Optional[Path], seed: int, manifest: dict) -> Optional[dict]:
    """Start trial ``seed``'s run folder ``out`` from a finished training of another scale's trial
    with the same seed and the same manifest (every setting that changes a result), found under
    ``source_runs/<experiment>/seed_<k>``: its folder is copied (never its lock), and the pipeline
    resumes from it as from any interrupted run of its own (the same seed gives the same bytes, so
    the trial's results are those of training anew). Nothing happens when ``out`` holds anything
    (a begun trial, or files the tool did not write) or no source matches. Returns where the
    training came from (the source's committed marker: its commit and seconds; also kept in
    ``out/training_from.json``), else None."""
    if source_runs is None or (out.exists() and any(out.iterdir())):  # begun, or not ours: never replaced
        return None
    for src in sorted(Path(source_runs).glob(f"*/seed_{seed}")):
        weights = src / "weights" / f"seed_{seed:02d}"
        if not ((weights / "final.h5").is_file() and (weights / "train_log.csv").is_file()):
            continue
        try:
            theirs = json.loads((src / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if theirs != json.loads(json.dumps(manifest)):
            continue
        found = {"experiment": src.parent.name, "seed": seed}
        pattern = f"*/runs/{src.parent.name}/trials/seed_{seed}.json"
        for marker in sorted((REPO / "docs" / "reproduction").glob(pattern)):
            info = json.loads(marker.read_text())
            found.update(scale=marker.parents[3].name, commit=info.get("commit"), wall_s=info.get("wall_s"),
                         compute_s=info.get("compute_s"))
        # copied beside ``out`` and renamed into place: an interrupted copy never counts as begun
        tmp = out.with_name(out.name + ".copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".lock"))
        (tmp / TRAINING_FROM).write_text(json.dumps(found, indent=1))
        if out.exists():  # an empty folder (checked above)
            out.rmdir()
        tmp.rename(out)
        return found
    return None


def run_scale(
    scale: Scale,
    runs: Path,
    data_dir: Optional[str],
    commit: bool = False,
    only: Optional[List[str]] = None,
    max_trials: Optional[int] = None,
    on_trial: Optional[Callable[[Experiment, int], None]] = None,
    log=print,
    seeds: Optional[Iterable[int]] = None,
    reuse_from: Optional[Path] = None,
) -> int:
    """Run every missing trial of ``scale`` (experiments in order, seeds ascending; only ``seeds``
    when given, so that processes can split one experiment); after each one copy its small files to
    the committed folder and, with ``commit``, commit them. Experiments whose data are not here
    (``needs``) are skipped with a message. ``reuse_from``: another scale's run folders whose finished
    trainings a trial of the same settings and seed starts from (``reuse_training``). Returns the
    trials run."""
    committed = committed_root(scale.name)
    started_at = code_commit()  # the code this process imported, whatever the checkout holds later
    keep = None if seeds is None else set(seeds)
    done = 0
    for exp in scale.experiments:
        if only and exp.name not in only and f"claim{exp.claim}" not in only:
            continue
        if exp.needs and not data_available(exp, data_dir):
            log(f"skip {exp.name}: needs {exp.needs}")
            continue
        for seed in range(exp.trials):
            if trial_done(committed, exp, seed) or (keep is not None and seed not in keep):
                continue
            if max_trials is not None and done >= max_trials:
                return done
            with TrialClaim(runs, exp, seed) as claim:
                if not claim.mine or trial_done(committed, exp, seed):
                    continue
                log(f"{time.strftime('%H:%M:%S')} {exp.name}: trial seed {seed} starts")
                out = run_folder(scale, exp, runs, seed)
                cfg = run_config(exp, runs, seed, data_dir, out)
                if reuse_from is not None:
                    origin = reuse_training(out, reuse_from, seed, cfg.manifest(REGISTRY))
                    if origin:
                        log(f"  training taken over from {origin['experiment']} seed {seed}")
                with claim.measure():  # an interrupted call's time counts too when the trial resumes
                    run(cfg, REGISTRY)
                totals = claim.totals()
                wall = totals["wall_s"]
                origin_file = out / TRAINING_FROM
                origin = json.loads(origin_file.read_text()) if origin_file.is_file() else None
                files = copy_trial(exp, runs, committed, seed, wall, out, cpu_s=totals["cpu_s"],
                                   training_from=origin, commit=started_at)
            log(f"{time.strftime('%H:%M:%S')} {exp.name}: trial seed {seed} done in {wall:.0f} s")
            if commit:
                ok = git_commit(files, f"reproduction {scale.name}: {exp.name} trial seed {seed} ({wall:.0f} s)")
                log("  committed" if ok else "  NOT committed (commit it by hand)")
            if on_trial:
                on_trial(exp, seed)
            done += 1
    return done


ARCHIVES = {
    "mnist": ("train-images-idx3-ubyte.gz",),
    "cifar10": ("cifar-10-python.tar.gz",),
    "stl10": ("stl10_binary.tar.gz",),
}


def data_available(exp: Experiment, data_dir: Optional[str]) -> bool:
    """Whether the archive of ``exp``'s built-in dataset is here (no download is attempted)."""
    from datasets.files import find_file, locate

    names = ARCHIVES.get(exp.dataset)
    if names is None:
        return True
    return find_file(locate(exp.dataset, data_dir), names) is not None

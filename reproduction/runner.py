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
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional

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
               src: Optional[Path] = None) -> List[Path]:
    """Copy trial ``seed``'s small files from its run folder ``src`` (default ``<runs>/<experiment>``)
    to the committed folder (never weights); the marker ``trials/seed_<k>.json`` is written last.
    Returns the files written."""
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
    marker.write_text(
        json.dumps(
            {
                "experiment": exp.name,
                "seed": seed,
                "wall_s": round(wall_s, 1),
                "compute_s": round(compute_s, 1),
                "commit": code_commit(),
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=1,
        )
    )
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
    lock); False when it did not commit."""
    rel = [str(Path(p).resolve().relative_to(repo.resolve())) for p in paths]
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
    The file also keeps the wall seconds of the trial's earlier calls (interrupted ones included, a
    SIGKILL's excepted), so a resumed trial's marker counts them all."""

    def __init__(self, runs: Path, exp: Experiment, seed: int):
        self.path = runs / ".claims" / f"{exp.name}_seed_{seed}"
        self.fh = None
        self.mine = False

    def __enter__(self) -> TrialClaim:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.mine = True
        except OSError:
            self.mine = False
        return self

    @property
    def wall_s(self) -> float:
        """Wall seconds of this trial's calls so far (as recorded by ``add_wall``)."""
        self.fh.seek(0)
        text = self.fh.read().strip()
        try:
            return float(text) if text else 0.0
        except ValueError:
            return 0.0

    def add_wall(self, seconds: float) -> float:
        """Record ``seconds`` more of wall time; returns the total."""
        total = self.wall_s + seconds
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{total:.1f}\n")
        self.fh.flush()
        return total

    def __exit__(self, *exc) -> None:
        self.fh.close()


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
) -> int:
    """Run every missing trial of ``scale`` (experiments in order, seeds ascending; only ``seeds``
    when given, so that processes can split one experiment); after each one copy its small files to
    the committed folder and, with ``commit``, commit them. Experiments whose data are not here
    (``needs``) are skipped with a message. Returns the trials run."""
    committed = committed_root(scale.name)
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
                t0 = time.time()
                out = run_folder(scale, exp, runs, seed)
                try:
                    run(run_config(exp, runs, seed, data_dir, out), REGISTRY)
                finally:  # an interrupted call's time counts too when the trial resumes
                    wall = claim.add_wall(time.time() - t0)
                files = copy_trial(exp, runs, committed, seed, wall, out)
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

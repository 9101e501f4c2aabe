"""Reproduce the papers' claims at a named scale and write the report (issue 21).

    python reproduce.py --scale cpu                  # run every missing trial, then the report
    python reproduce.py --scale cpu --report-only    # rebuild the report from the committed runs
    python reproduce.py --scale paper --data-dir DIR # the papers' sizes (GPU advised)
    python reproduce.py --scale pilot --data-dir DIR # issue 32's pilot: which training size has settled

Trials run one at a time through the project's pipeline into ``--runs`` (resumable: an interrupted
trial continues where it stopped); each finished trial's small files are copied to
``docs/reproduction/<scale>/runs/`` (``--commit``: and committed), and the report
``docs/reproduction/<scale>/report/index.md`` is built from there only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cleansing.cli import run_main  # noqa: E402


def head_commit() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip()


def main(argv: Optional[List[str]] = None) -> int:
    from reproduction.scales import SCALES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="named scale (default %(default)s)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from the committed runs")
    p.add_argument("--runs", default=None, help="run folders (default: output_reproduction_<scale>)")
    p.add_argument(
        "--data-dir", default=None, help="folder holding the dataset archives (e.g. ../shared/datasets/mnist)"
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="experiments or claims to run (e.g. claim1, claim4_td_digits_to_mnist)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        metavar="K",
        help="only these trial seeds (two processes can split one experiment: --seeds 1 3 5 / --seeds 2 4 6)",
    )
    p.add_argument("--max-trials", type=int, default=None, help="stop after this many new trials")
    p.add_argument(
        "--reuse-training",
        default=None,
        metavar="RUNS",
        help="another scale's run folders (e.g. the pilot's): a trial whose settings and seed match a finished "
        "training there starts from a copy of it; its marker says so",
    )
    p.add_argument("--commit", action="store_true", help="git-commit each finished trial's small files")
    p.add_argument(
        "--report-each", action="store_true", help="rebuild (and with --commit commit) the report after each trial"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    a = p.parse_args(argv)
    scale = SCALES[a.scale]
    from reproduction.report import build_report
    from reproduction.runner import committed_root, git_commit, run_scale

    committed = committed_root(scale.name)

    def report(commit: bool = False) -> Path:
        if scale.name == "pilot":
            from reproduction.pilot import write_pilot

            index = write_pilot(scale, committed, head_commit())
            if commit:
                git_commit([index, index.with_suffix(".csv")], "reproduction pilot: table rebuilt")
            return index
        index = build_report(scale, committed, head_commit())
        if commit:
            files = (
                [index, index.with_suffix(".html")]
                + sorted((index.parent).rglob("*.png"))
                + sorted(index.parent.glob("*.csv"))
            )
            git_commit(files, f"reproduction {scale.name}: report rebuilt from the committed runs")
        return index

    if not a.report_only:
        runs = Path(a.runs or ROOT / f"output_reproduction_{scale.name}").resolve()
        hook = (lambda exp, seed: report(a.commit)) if a.report_each else None
        n = run_scale(
            scale, runs, a.data_dir, commit=a.commit, only=a.only, max_trials=a.max_trials, on_trial=hook,
            seeds=a.seeds, reuse_from=Path(a.reuse_training).resolve() if a.reuse_training else None,
        )
        print(f"{n} trial(s) run; run folders in {runs}")
    index = report(a.commit and not a.report_only)
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

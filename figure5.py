"""The paper's Fig. 5 (batch-size dependence): one result panel per output folder.

    python figure5.py output_bs32 output_bs64 output_bs128 output_bs256 -o fig5.png

Each folder is a finished run of a driver (``summary/summary.csv`` and ``manifest.json``); the
panel title gives its dataset, model and batch size.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import pandas as pd

from cleansing.analyze import plot_result_panels
from cleansing.cli import run_main
from common.errors import UserError


def panel(folder: Path) -> tuple:
    summary, manifest = folder / "summary" / "summary.csv", folder / "manifest.json"
    if not summary.is_file() or not manifest.is_file():
        raise UserError(f"{folder} has no summary/summary.csv and manifest.json: run the driver with -o {folder} first")
    m = json.loads(manifest.read_text())
    n = pd.read_csv(summary)
    trials = int(n.n_trials.max()) if "n_trials" in n else 1
    return (f"{m['dataset']} / {m['model']}, batch {m['batch_size']} ({trials} trial{'s' if trials > 1 else ''})", n)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="output folders of finished runs, one per batch size")
    p.add_argument("-o", "--output", default="fig5.png", help="picture to write (default %(default)s)")
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)
    plot_result_panels([panel(Path(f)) for f in a.folders], Path(a.output),
                       "test accuracy after removing the most harmful samples, by batch size")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

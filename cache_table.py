"""The paper's Table 1: parameter cache sizes of All parameters, Hara et al. and Ours.

    python cache_table.py                       # measure a cnn6 parameter file, print the table
    python cache_table.py --param-file F.h5     # use the size of an existing parameter file

The size of one parameter file (theta) is measured by saving a freshly built cnn6 (1x32x32 input
for MNIST, 3x32x32 for CIFAR-10, 10 classes) with ``common.params_io.save_params`` to a temporary
folder. Then All parameters = theta x T x k, Hara = theta x T, Ours = theta, with
T = ceil(n_train / batch size) and k = epochs; GB = 10^9 bytes (as the paper's 1.236 MB x 1,563
= 1.932 GB).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cleansing.cli import run_main  # noqa: E402
from cleansing.estimator import positive_int  # noqa: E402
from common.errors import UserError  # noqa: E402
from sgd_influence.cache_table import SETTINGS, build_table, cnn6_file_bytes  # noqa: E402


def format_table(table) -> str:
    lines = [f"{'dataset':<9} {'n_train':>7} {'T':>5} {'theta (B)':>10}  {'method':<15} {'stored':<15}"
             f"{'files':>6} {'bytes':>15} {'GB':>10} {'paper GB':>9} {'ours/paper':>10}"]
    for r in table.itertuples(index=False):
        paper = "-" if r.paper_GB != r.paper_GB else f"{r.paper_GB:g}"
        ratio = "-" if r.ratio != r.ratio else f"{r.ratio:.4f}"
        lines.append(f"{r.dataset:<9} {r.n_train:>7,} {r.steps_per_epoch:>5,} {r.param_file_bytes:>10,}  "
                     f"{r.method:<15} {r.stored:<15}{r.files:>6,} {r.bytes:>15,} {r.GB:>10.6g} {paper:>9} {ratio:>10}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Print the paper's Table 1 (parameter cache sizes) for this project's "
                                            "parameter files, next to the paper's numbers.")
    p.add_argument("--param-file", default=None,
                   help="measure this parameter file (.h5) instead of a freshly saved cnn6 (used for both datasets)")
    p.add_argument("-bs", "--batch-size", type=positive_int, default=32,
                   help="mini-batch size (default 32, the paper's)")
    p.add_argument("-e", "--epochs", type=positive_int, default=20, help="epochs k (default 20, the paper's)")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.param_file:
        f = Path(args.param_file).expanduser()
        if not f.is_file():
            raise UserError(f"parameter file {f} not found; give an existing .h5 file to --param-file")
        size = f.stat().st_size
        sizes = {key: size for _, key, _ in SETTINGS}
        source = f"theta = {f} ({size:,} B) for both datasets"
    else:
        sizes = {key: cnn6_file_bytes(shape) for _, key, shape in SETTINGS}
        source = ("theta = a cnn6 parameter file saved by common.params_io.save_params: "
                  + ", ".join(f"{label} {shape[0]}x{shape[1]}x{shape[2]} input {sizes[key]:,} B"
                              for label, key, shape in SETTINGS))
    table = build_table(sizes, args.batch_size, args.epochs, with_replay=True)
    print(f"Parameter cache sizes (paper's Table 1): batch size {args.batch_size}, k = {args.epochs} epochs, "
          f"T = ceil(n_train / batch size), GB = 10^9 B")
    print(source)
    print(format_table(table))
    if args.batch_size != 32 or args.epochs != 20:
        print("(the paper's numbers are for batch size 32 and 20 epochs: not compared)")
    if args.csv:
        from common.fileio import write_csv_atomic
        write_csv_atomic(args.csv, table)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

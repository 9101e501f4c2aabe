"""Data cleansing with SGD-influence: train, estimate influence (Hara, Ours, Random), retrain
without the most harmful samples, summarise. See README.md and docs/SPEC.md section 3."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from cleansing.cli import OneLineParser, add_run_arguments, run_main
from cleansing.pipeline import DEFAULT_REMOVE, RunConfig, config_fields, run


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__)
    add_run_arguments(p, "output_sgd_influence", DEFAULT_REMOVE)
    p.add_argument("--methods", nargs="+", default=["Hara", "Ours", "Random"],
                   help="estimators to run (default: %(default)s)")
    return p


def config_from_args(a: argparse.Namespace) -> RunConfig:
    return RunConfig(**config_fields(a))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    summary = run(config_from_args(args), overwrite=args.overwrite)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"results in {args.output}/ (summary/summary.csv, fig/result.png)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

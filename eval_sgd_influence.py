"""Data cleansing with SGD-influence: train, estimate influence (default: Hara, Ours, Random; any
registered estimator with --methods), retrain without the most harmful samples, summarise.
See README.md and docs/SPEC.md section 3."""
from __future__ import annotations

import sys
from typing import List, Optional

from cleansing.cli import Driver, run_main
from estimators import REGISTRY

DRIVER = Driver(__doc__, out="output_sgd_influence", methods=("Hara", "Ours", "Random"))


def main(argv: Optional[List[str]] = None) -> int:
    return DRIVER.main(argv, REGISTRY)


if __name__ == "__main__":
    sys.exit(run_main(main))

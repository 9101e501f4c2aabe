"""Data cleansing with turn-over dropout (Kobayashi et al., 2020): train the network once with
instance-specific dropout masks, score every training sample by the mean validation-loss gap
between the sub-network that never saw it and the one that did, then retrain (standard training,
no turn-over dropout) without the most harmful samples and summarise, beside Random removal
(default methods; any registered estimator with --methods).

Besides the usual tree it writes, per trial: summary/turnover_loss_curve_<seed>.csv and
fig/turnover_loss_curve_<seed>.png (paper Fig. 2), summary/turnover_check_<seed>.csv,
summary/explain_errors_Turnover_dropout_<seed>.csv and its figure (paper Fig. 5; 8 test errors by
default), and the TD network in weights/seed_NN/turnover/."""
from __future__ import annotations

import sys
from typing import List, Optional

from cleansing.cli import Driver, run_main
from estimators import REGISTRY

DRIVER = Driver(__doc__, out="output_turnover_dropout", methods=("Turnover_dropout", "Random"), explain_max=8)


def main(argv: Optional[List[str]] = None) -> int:
    return DRIVER.main(argv, REGISTRY)


if __name__ == "__main__":
    sys.exit(run_main(main))

"""The output folder tree (docs/SPEC.md section 4), in one place."""
from __future__ import annotations

from pathlib import Path
from typing import Union


class RunPaths:
    """Paths of every file a run writes under its output folder ``root``."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)

    # parameter cache and trace
    def weights(self, seed: int) -> Path:
        return self.root / "weights" / f"seed_{seed:02d}"

    def params(self, seed: int, which: str) -> Path:
        """``which``: 'initial', 'start_last_epoch' or 'final'."""
        return self.weights(seed) / f"{which}.h5"

    def hara_dir(self, seed: int) -> Path:
        return self.weights(seed) / "hara"

    def hara_step(self, seed: int, step: int) -> Path:
        """Parameters before global step ``step`` (a step of the last epoch)."""
        return self.hara_dir(seed) / f"step_{step:06d}.h5"

    def trace(self, seed: int) -> Path:
        return self.weights(seed) / "trace.npz"

    def train_log(self, seed: int) -> Path:
        return self.weights(seed) / "train_log.csv"

    # results
    def influence_csv(self, method: str, seed: int) -> Path:
        return self.root / "influence" / method / f"influence_{method.lower()}_{seed}.csv"

    def score_csv(self, method: str, n: int, seed: int) -> Path:
        return self.root / "score" / method / f"score_delete_worst_{n}_seed_{seed}.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary"

    @property
    def fig(self) -> Path:
        return self.root / "fig"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

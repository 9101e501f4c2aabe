"""Influence CSVs in the format of docs/SPEC.md section 4: ``x:image,y:label,influence,datasource_index``,
sorted ascending (most harmful first); ties broken by ``datasource_index`` so the file is
deterministic."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from common.errors import UserError
from common.fileio import read_csv_exact, write_csv_atomic

COLUMNS = ["x:image", "y:label", "influence", "datasource_index"]


def influence_frame(ids: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    noisy: Optional[np.ndarray] = None) -> pd.DataFrame:
    """The sorted table for training samples with ``scores`` (index = training position)."""
    scores = np.asarray(scores, np.float64)
    order = np.lexsort((np.arange(len(scores)), scores))
    frame = pd.DataFrame({"x:image": np.asarray(ids)[order], "y:label": np.asarray(labels)[order],
                          "influence": scores[order], "datasource_index": order})
    if noisy is not None:
        frame["noisy"] = np.asarray(noisy, int)[order]
    return frame


def write_influence_csv(path: Union[str, Path], frame: pd.DataFrame) -> None:
    write_csv_atomic(path, frame)


def read_influence_csv(path: Union[str, Path], n_train: int) -> pd.DataFrame:
    """Read an influence CSV back, checking columns and that it covers the training set once."""
    path = Path(path)
    try:
        frame = read_csv_exact(path)
    except Exception as exc:
        raise UserError(f"influence CSV {path} is unreadable ({type(exc).__name__}); delete it and rerun") from None
    idx = frame.get("datasource_index")
    if list(frame.columns[:4]) != COLUMNS or idx is None or len(frame) != n_train or \
            not np.array_equal(np.sort(idx.to_numpy()), np.arange(n_train)):
        raise UserError(f"influence CSV {path} does not list the {n_train} training samples once each "
                        f"with columns {','.join(COLUMNS)}; delete it and rerun")
    if not np.all(np.isfinite(pd.to_numeric(frame["influence"], errors="coerce"))):
        raise UserError(f"influence CSV {path} holds influence values that are not finite numbers; delete it and rerun")
    return frame


def scores_by_position(frame: pd.DataFrame) -> np.ndarray:
    """The ``influence`` column of a (sorted) influence frame, indexed by training position."""
    scores = np.empty(len(frame), np.float64)
    scores[frame["datasource_index"].to_numpy()] = frame["influence"].to_numpy()
    return scores

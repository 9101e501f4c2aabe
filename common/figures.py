"""Figure helpers shared by every report: a headless matplotlib, atomic saving, image cells."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fileio import atomic_path  # noqa: E402


def save_figure(fig, path: Union[str, Path], dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` through a temporary name (never a half-written PNG) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path


def show_image(ax, image: np.ndarray) -> None:
    """A uint8 (C, H, W) image as stored (no normalisation), grey or RGB, without ticks."""
    img = np.asarray(image)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])

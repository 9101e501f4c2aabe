"""The per-channel normalisation every dataset's images get (``datasets.to_network_input``), here so
that a model that must undo it (``models.nnp``) can read the same numbers."""
from __future__ import annotations

GREY_MEAN: tuple = (0.5,)
GREY_STD: tuple = (0.5,)
COLOUR_MEAN: tuple = (0.4914, 0.4822, 0.4465)
COLOUR_STD: tuple = (0.2023, 0.1994, 0.2010)


def norm_stats(channels: int) -> tuple:
    """(mean, std) for grey (1 channel) or colour (3 channels) images."""
    if channels == 1:
        return GREY_MEAN, GREY_STD
    return COLOUR_MEAN, COLOUR_STD

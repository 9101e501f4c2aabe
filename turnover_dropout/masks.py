"""Volatile, instance-specific dropout masks (turn-over dropout, Kobayashi et al. 2020, sec. 3.3).

A mask is never stored: it is recomputed whenever needed from (trial seed, mask point name,
training-instance index, unit) by a counter-based hash (SplitMix64 finalizer), so it is the
same in every process, on every platform, for every NumPy version, and costs O(1) storage.

* ``m(z_i)[c] = keep / p`` with ``keep = [u(seed, point, i, c) < p]``, ``u`` uniform in [0, 1):
  values in ``{0, 1/p}`` (``{0, 2}`` for the default ``p = 0.5``), so ``E[m] = 1``;
* the flipped mask ``m~(z_i) = 1/p - m(z_i)`` keeps exactly the units ``m(z_i)`` drops.

A mask has one value per *channel* (unit) of a mask point: on a convolutional feature map
(B, C, H, W) the value multiplies the whole H x W map of channel c (channel-wise dropout).
"""
from __future__ import annotations

import zlib
from typing import Dict, Mapping, Sequence

import numpy as np

P_KEEP = 0.5
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TAG = 0x7D0D  # separates these streams from any other use of the same seed


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def point_key(seed: int, point: str) -> np.uint64:
    """64-bit key of (seed, mask point name)."""
    k = np.array([(int(seed) & 0xFFFFFFFF) << 16 | _TAG], dtype=np.uint64)
    k = _mix(_mix(k) ^ np.uint64(zlib.crc32(point.encode("utf-8"))))
    return k[0]


def keep_bits(indices: np.ndarray, seed: int, point: str, units: int, p: float = P_KEEP) -> np.ndarray:
    """bool (len(indices), units): which units instance ``indices[r]`` keeps at ``point``."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError("instance indices must be non-negative")
    row = _mix(np.uint64(point_key(seed, point)) ^ _mix(idx.astype(np.uint64)))
    unit = np.arange(1, units + 1, dtype=np.uint64) * _GOLDEN
    with np.errstate(over="ignore"):
        h = _mix(row[:, None] + unit[None, :])
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2 ** 53)
    return u < p


def mask_stream(point: str, network: int = 0) -> str:
    """The name the masks of ``point`` are keyed on: the point itself for the first TD network of a
    trial, an independent stream for each further network of an ensemble (``--td-networks``)."""
    return point if network == 0 else f"{point}@net{network}"


def instance_masks(indices: np.ndarray, seed: int, shapes: Mapping[str, int], p: float = P_KEEP,
                   dtype=np.float32, network: int = 0) -> Dict[str, np.ndarray]:
    """``m(z_i)`` for every row ``indices[r]``: point name -> (len(indices), units) in {0, 1/p}."""
    return {name: keep_bits(indices, seed, mask_stream(name, network), int(units), p).astype(dtype) * dtype(1.0 / p)
            for name, units in shapes.items()}


def flip(masks: Mapping[str, np.ndarray], p: float = P_KEEP) -> Dict[str, np.ndarray]:
    """The flipped masks ``m~ = 1/p - m``."""
    return {k: (np.asarray(v).dtype.type(1.0 / p) - v) for k, v in masks.items()}


def ones(n: int, shapes: Mapping[str, int], dtype=np.float32) -> Dict[str, np.ndarray]:
    """All-ones masks (the full network, as at test time)."""
    return {k: np.ones((n, int(c)), dtype) for k, c in shapes.items()}


def resolve_layers(model_name: str, mask_points: Sequence[str], layers) -> tuple:
    """The mask points to use: ``layers`` (names, 'all', or None = the topmost point only).

    Raises ValueError naming the valid choices when a name is unknown or the model has none.
    """
    points = tuple(mask_points)
    if not points:
        from models import MODELS  # here: the masks themselves need only NumPy
        maskable = " or ".join(f"-m {name}" for name, cls in MODELS.items() if cls.mask_points)
        raise ValueError(f"model '{model_name}' has no layer that turn-over dropout can mask; use {maskable}")
    if layers is None or (isinstance(layers, str) and layers in ("", "default")):
        return points[-1:]
    if isinstance(layers, str):
        layers = [s for s in layers.replace(",", " ").split() if s]
    if list(layers) == ["all"]:
        return points
    unknown = [name for name in layers if name not in points]
    if unknown or not layers:
        raise ValueError(f"unknown turn-over dropout layer(s) {unknown} for model '{model_name}'; "
                         f"choose from {', '.join(points)} or 'all'")
    return tuple(p for p in points if p in set(layers))  # lowest first, no duplicates

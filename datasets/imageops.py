"""Array-level image operations: working-size resize, training augmentation, normalisation.

All functions work on whole uint8 arrays (N, C, H, W) at once.
"""
from __future__ import annotations

import numpy as np

PAD = 4            # zero padding of the random crop
MIN_EDGE = 32      # short edge under this: resized to MIN_EDGE x MIN_EDGE
MAX_EDGE = 128     # short edge over this: resized to MAX_EDGE x MAX_EDGE
_RESIZE_CHUNK = 8192


def working_size(height: int, width: int) -> tuple:
    """docs/SPEC.md section 5: short edge < 32 -> (32, 32); 32..128 -> kept; > 128 -> (128, 128)."""
    short = min(height, width)
    if short < MIN_EDGE:
        return (MIN_EDGE, MIN_EDGE)
    if short > MAX_EDGE:
        return (MAX_EDGE, MAX_EDGE)
    return (int(height), int(width))


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear (triangle filter) resampling, pixel centres at i+0.5.

    Upsampling is plain bilinear with edge clamping; downsampling widens the triangle by the
    scale factor (area-aware, like PIL's BILINEAR). Each row sums to 1.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    taps = np.arange(n_in) + 0.5
    weights = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_images(images: np.ndarray, size: tuple) -> np.ndarray:
    """uint8 (N, C, H, W) -> uint8 (N, C, h, w) by separable bilinear resampling (deterministic)."""
    height, width = int(size[0]), int(size[1])
    if images.shape[2:] == (height, width):
        return images
    rows = resize_matrix(images.shape[2], height).astype(np.float32)
    cols_t = resize_matrix(images.shape[3], width).T.astype(np.float32)
    out = np.empty(images.shape[:2] + (height, width), dtype=np.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start:start + _RESIZE_CHUNK].astype(np.float32)
        resized = rows @ (chunk @ cols_t)
        out[start:start + _RESIZE_CHUNK] = np.clip(np.rint(resized), 0, 255)
    return out


def to_working_size(images: np.ndarray) -> np.ndarray:
    """Resize uint8 (N, C, H, W) to the working size of its (H, W)."""
    return resize_images(images, working_size(images.shape[2], images.shape[3]))


def augment_params(seeds: np.ndarray) -> tuple:
    """Per-row crop offsets and flips, each drawn from ``np.random.default_rng(seeds[i])`` alone.

    Draw order per row: ``dy, dx = rng.integers(0, 2*PAD + 1, size=2)``, then
    ``flip = rng.random() < 0.5``. Returns (dy, dx, flip) arrays of shape (B,).
    """
    seeds = np.asarray(seeds).reshape(-1)
    dy = np.empty(seeds.shape[0], dtype=np.int64)
    dx = np.empty(seeds.shape[0], dtype=np.int64)
    flip = np.empty(seeds.shape[0], dtype=bool)
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(int(seed))
        dy[i], dx[i] = rng.integers(0, 2 * PAD + 1, size=2)
        flip[i] = rng.random() < 0.5
    return dy, dx, flip


def apply_augmentation(images: np.ndarray, dy: np.ndarray, dx: np.ndarray,
                       flip: np.ndarray) -> np.ndarray:
    """Zero-pad by PAD, crop (H, W) at (dy[i], dx[i]), then mirror horizontally where flip[i].

    dy = dx = PAD with no flip returns the image unchanged.
    """
    batch, channels, height, width = images.shape
    padded = np.zeros((batch, channels, height + 2 * PAD, width + 2 * PAD), dtype=images.dtype)
    padded[:, :, PAD:PAD + height, PAD:PAD + width] = images
    rows = np.asarray(dy)[:, None] + np.arange(height)
    cols = np.asarray(dx)[:, None] + np.arange(width)
    cols = np.where(np.asarray(flip)[:, None], cols[:, ::-1], cols)
    return padded[np.arange(batch)[:, None, None, None], np.arange(channels)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def augment(images: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """uint8 (B, C, H, W) -> uint8 (B, C, H, W): random crop (zero padding 4) and random flip.

    Row i depends only on (images[i], seeds[i]) (see ``augment_params``), so the same image and
    seed always give the same result, whatever else is in the batch.
    """
    if images.ndim != 4 or len(seeds) != images.shape[0]:
        raise ValueError(f"augment: need images (B,C,H,W) and B seeds, got {images.shape} and {len(seeds)}")
    return apply_augmentation(images, *augment_params(seeds))


def to_network_input(images: np.ndarray, mean: tuple, std: tuple) -> np.ndarray:
    """uint8 (B, C, H, W) -> float32 (B, C, H, W): x / 255, then (x - mean[c]) / std[c]."""
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"to_network_input: {channels} channels but mean/std of length {len(mean)}/{len(std)}")
    scaled = images.astype(np.float32) / np.float32(255.0)
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(1, channels, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(1, channels, 1, 1)
    return (scaled - mean_arr) / std_arr

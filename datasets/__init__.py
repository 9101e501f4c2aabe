"""Datasets: built-ins (digits, mnist, cifar10, stl10) and own NNC CSV data, split per trial seed.

Public API: ``load_dataset`` -> ``DataBundle`` of ``Split``s (uint8 images at the working size),
``augment`` (seeded per-sample crop + flip) and ``to_network_input`` (normalisation).
"""
from datasets.base import DataBundle, DatasetError, Split
from datasets.imageops import augment, to_network_input
from datasets.loader import load_dataset

__all__ = ["DataBundle", "DatasetError", "Split", "augment", "load_dataset", "to_network_input"]

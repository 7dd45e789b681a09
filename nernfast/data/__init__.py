"""Datasets for originals, teachers and evaluation; everything is read from local disk.

``get_dataset(name, data_root, seed, val_fraction, image_size, in_channels) -> DataBundle``;
see :mod:`nernfast.data.datasets` for the formats, statistics and augmentation of each dataset
and :mod:`nernfast.data.adapt` for how inputs are fitted to a model (the one place that does it).
"""
from __future__ import annotations

from .adapt import adapt_images, adapt_stats
from .base import Augment, DataBundle, DatasetError, FolderDataset, TensorImageDataset, TensorLoader
from .datasets import DATASETS, SPECS, canonical_name, default_data_root, get_dataset

__all__ = ["Augment", "DATASETS", "DataBundle", "DatasetError", "FolderDataset", "SPECS", "TensorImageDataset",
           "TensorLoader", "adapt_images", "adapt_stats", "canonical_name", "default_data_root", "get_dataset"]

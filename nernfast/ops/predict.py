"""Coordinates -> positional encoding -> predictor MLP -> KxK rows.

``predict_rows_reference`` is the plain composition of the modules (the ground truth for every fast
path). ``predict_rows`` is the dispatching entry point used everywhere else.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..predictor import Predictor


def predict_rows_reference(predictor: Predictor, encoding: nn.Module, coords: torch.Tensor,
                           chunk: int | None = None) -> torch.Tensor:
    if chunk is None or coords.shape[0] <= chunk:
        return predictor(encoding(coords))
    return torch.cat([predictor(encoding(c)) for c in coords.split(chunk)])


def predict_rows(predictor: Predictor, encoding: nn.Module, coords: torch.Tensor,
                 chunk: int | None = None) -> torch.Tensor:
    return predict_rows_reference(predictor, encoding, coords, chunk)

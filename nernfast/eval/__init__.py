"""Evaluation as in the paper: top-1 accuracy, OOD accuracy (CIFAR-10-C / CIFAR-100-C /
ImageNet-R when on disk, else a built-in corruption suite), FGSM and I-FGSM accuracy in pixel
space. ``evaluate_model`` returns every figure with the settings used."""
from __future__ import annotations

from .cache import evaluate_cached, state_digest
from .attacks import Normalized, fgsm, fgsm_accuracy, ifgsm, ifgsm_accuracy
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .metrics import ATTACK_DEFAULTS, accuracy, attack_defaults, evaluate_model, format_results
from .ood import CIFAR_C_CORRUPTIONS, builtin_corruption_accuracy, find_ood_set, ood_accuracy

__all__ = ["ATTACK_DEFAULTS", "CIFAR_C_CORRUPTIONS", "CORRUPTIONS", "Normalized", "SEVERITIES", "accuracy",
           "attack_defaults", "builtin_corruption_accuracy", "corrupt", "evaluate_cached", "evaluate_model", "fgsm", "fgsm_accuracy",
           "find_ood_set", "format_results", "ifgsm", "ifgsm_accuracy", "ood_accuracy", "state_digest"]

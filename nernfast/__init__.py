"""nernfast: fast neural representations of CNN weights (NeRN), with decoupled, progressive and
teacher-guided training."""
from __future__ import annotations

from . import _source_tree
from .artefact import export_state_dict, load, load_nern, save_artefact
from .encoding import BasicEncoding, FFNEncoding, build_encoding
from .models import build_model
from .nern import NeRN
from .plan import LayerSpec, WeightPlan, build_plan
from .predictor import Predictor
from .errors import PlanError
from .selection import select_layers

__version__ = "0.1.0"

_source_tree.install()  # a bare checkout: the top-level kernels/ as nernfast.kernels (see _source_tree)

__all__ = ["BasicEncoding", "FFNEncoding", "LayerSpec", "NeRN", "PlanError", "Predictor", "WeightPlan",
           "build_encoding", "build_model", "build_plan", "export_state_dict", "load", "load_nern",
           "save_artefact", "select_layers"]

"""The errors nernfast raises for input that does not fit (each message names the problem and the fix)."""
from __future__ import annotations


class PlanError(ValueError):
    """A model, checkpoint or predictor that does not fit the weight plan; the message names the fix."""

"""The allowed values of every config field, checked when a config is resolved (before any work).

``RANGES`` gives the range of every numeric field and ``CHOICES`` the values of every field that
names an option; a test makes sure no numeric field is missing. Phase fields (``phase.*``) are
checked for the phases the recipe runs. A violation raises one ConfigError naming the key, the
value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Any

from .config import ConfigError, PhaseConfig, RunConfig, recipe_phases


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    open_low: bool = False                # low itself not allowed

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or self.open_low and v == self.low):
            return False
        return self.high is None or v <= self.high

    def __str__(self) -> str:
        lo = None if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
        hi = None if self.high is None else f"<= {self.high:g}"
        return " and ".join(x for x in (lo, hi) if x) or "finite"


def at_least(n: float) -> Range:
    return Range(low=n)


POSITIVE = Range(low=0, open_low=True)
NONNEGATIVE = at_least(0)
ANY = Range()

# Dotted key -> range; "phase." stands for phase1 and phase2. None values (optional fields) pass.
RANGES: dict[str, Range] = {
    "seed": NONNEGATIVE,
    "pretrain_epochs": at_least(1),
    "nern.hidden": at_least(1),
    "nern.num_blocks": at_least(2),       # input and output layers
    "nern.levels": at_least(1),
    "nern.base": POSITIVE,
    "nern.ffn_features": at_least(1),
    "nern.ffn_sigma": POSITIVE,
    "nern.ffn_seed": NONNEGATIVE,
    "nern.kernel_size": at_least(1),
    "phase.steps": at_least(1),           # 0 is allowed with init_from: the predictor starts trained
    "phase.lr": POSITIVE,
    "phase.weight_decay": NONNEGATIVE,
    "phase.lr_warmup_steps": NONNEGATIVE,
    "phase.recon_weight": NONNEGATIVE,
    "phase.fmd_weight": NONNEGATIVE,
    "phase.kd_weight": NONNEGATIVE,
    "phase.temperature": POSITIVE,
    "phase.warmup_steps": NONNEGATIVE,
    "phase.batch_size": at_least(1),
    "phase.bn_recalibration": NONNEGATIVE,
    "phase.l2_scale_every": NONNEGATIVE,
    "phase.noise_low": ANY,               # below noise_high (checked with it)
    "phase.noise_high": ANY,
    "phase.weights_batch_size": at_least(1),  # capped at the plan's row count once the plan is known
    "phase.eval_every": at_least(1),
    "phase.patience": NONNEGATIVE,
    "phase.ema_decay": Range(low=0, high=0.9999),  # 1 would never move the average
    "phase.checkpoint_every": at_least(1),
    "progressive.rounds": at_least(1),
    "progressive.seeds": at_least(1),
    "progressive.bn_recalibration": NONNEGATIVE,
    "bn_recalibration_end": NONNEGATIVE,
    "eval.batch_size": at_least(1),
    "eval.fgsm_eps": NONNEGATIVE,
    "eval.ifgsm_eps": NONNEGATIVE,
    "eval.ifgsm_steps": at_least(1),
}

FLAGS = {"nern.hidden": "--hidden", "seed": "--seed"}  # CLI flags that set a key, named in messages


def _choices() -> dict[str, tuple[str, ...]]:
    """Dotted key -> allowed values (imported here, where they are defined)."""
    from .batching import BATCH_METHODS
    from .encoding import ENCODINGS
    from .losses import KD_LOSSES, RECON_LOSSES
    from .optim import OPTIMIZERS, SCHEDULES
    from .permutation import PERMUTATIONS
    from .plan import NORMALIZATIONS
    from .predictor import INITS
    return {
        "precision": ("auto", "float32", "bf16"),
        "nern.permutation": PERMUTATIONS, "nern.normalization": NORMALIZATIONS, "nern.encoding": ENCODINGS,
        "nern.init": INITS,
        "phase.optimizer": OPTIMIZERS, "phase.schedule": SCHEDULES, "phase.recon_loss": RECON_LOSSES,
        "phase.kd_loss": KD_LOSSES, "phase.data": ("none", "dataset", "noise"),
        "phase.distill_from": ("original", "teacher"), "phase.weights_batch_method": BATCH_METHODS,
        "phase.select": ("val_acc", "recon_l2", "last", "noise_kd"),
    }


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, str, Any, Any]]:
    """(dotted key, table key, value, type) of every field; phase fields map to 'phase.<name>'."""
    hints = typing.get_type_hints(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        v, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(v):
            out += _leaves(v, key + ".")
        else:
            table = f"phase.{f.name}" if isinstance(obj, PhaseConfig) else key
            out.append((key, table, v, hints[f.name]))
    return out


def numeric_keys() -> set[str]:
    """Every table key of an int or float field (optional ones included)."""
    keys = set()
    for _, table, _, typ in _leaves(RunConfig()):
        args = typing.get_args(typ) or (typ,)
        if any(a in (int, float) for a in args):
            keys.add(table)
    return keys


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    how = f"{FLAGS[key]} N or --set {key}=N" if key in FLAGS else f"--set {key}=..."
    return ConfigError(f"{key} = {value!r} is out of range: must be {allowed}; pass another value ({how})")


def check(cfg: RunConfig) -> None:
    """Raise a ConfigError for the first value outside its range or choices."""
    from .data import DatasetError, canonical_name
    try:
        canonical_name(cfg.dataset)
    except DatasetError as e:
        raise ConfigError(f"{e} (--dataset)") from None
    running = set(recipe_phases(cfg.recipe))
    choices = _choices()
    for key, table, v, _ in _leaves(cfg):
        if key.split(".")[0] in ("phase1", "phase2") and key.split(".")[0] not in running:
            continue  # a phase the recipe does not run
        if v is None or isinstance(v, bool):
            continue
        if table in RANGES and isinstance(v, (int, float)):
            r = RANGES[table]
            if table == "phase.steps" and cfg.init_from:
                r = NONNEGATIVE
            if v not in r:
                raise _fail(key, v, str(r) + (" (0 only with --init-from)" if table == "phase.steps" else ""))
        if table in choices and v not in choices[table]:
            raise ConfigError(f"{key} = {v!r} is not one of {', '.join(choices[table])}; "
                              f"pass one of them (--set {key}=...)")
    for key in sorted(running):
        p = getattr(cfg, key)
        if not p.noise_low < p.noise_high:
            raise _fail(f"{key}.noise_low", p.noise_low, f"below {key}.noise_high = {p.noise_high!r}")
        # the BN options that read training images, with the value that turns each off: named in one line
        on = [(o, off) for o, off in (("bn_recalibration", "0"), ("bn_batch_stats", "false")) if getattr(p, o)]
        if on and p.data != "dataset":
            what = " and ".join(f"{key}.{o} = {getattr(p, o)!r}" for o, _ in on)
            raise ConfigError(f"{what} need{'s' if len(on) == 1 else ''} training images but {key}.data = "
                              f"{p.data!r}; pass {' '.join(f'--set {key}.{o}={off}' for o, off in on)} or "
                              f"--set {key}.data=dataset")
    if cfg.recipe == "progressive" and cfg.bn_recalibration_end:
        raise ConfigError(f"bn_recalibration_end = {cfg.bn_recalibration_end} does not apply to progressive, which "
                          "re-estimates BN statistics after every round (progressive.bn_recalibration); pass "
                          "--set bn_recalibration_end=0")
    for key in ("include", "exclude"):
        for pattern in getattr(cfg.nern, key) or []:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"nern.{key}: {pattern!r} is not a regular expression ({e}); "
                                  "fix the pattern (module names, e.g. 'layer1\\..*')") from None

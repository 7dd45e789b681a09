"""Run configuration: dataclasses with defaults, shared phase defaults and one YAML file per recipe,
a dataset-level ``--config`` file, CLI flags and ``--set key=value`` overrides.

Resolution order, each layer overriding the ones before it:

1. the dataclass defaults below (generic values; the paper's where it gives them);
2. ``configs/defaults.yaml``: the values shared by the six recipes (model, dataset, predictor);
3. the phase defaults the recipe's phases start from: ``configs/<recipe>.yaml`` lists them
   (``phases: [reconstruction]`` or ``[reconstruction, distillation]``, defined under
   ``phase_defaults`` in defaults.yaml) -- the one place that says which recipes have a phase 2;
4. the rest of ``configs/<recipe>.yaml``: the recipe's differences from those defaults;
5. ``--config FILE`` (a path, or a shipped name such as ``cifar10_resnet20.yaml``): its top-level
   values apply to every recipe, then its ``per_recipe: {<recipe>: {...}}`` section to that recipe
   only (e.g. a joint phase's distillation weights for ``baseline``); its ``recipe:`` key picks
   the recipe when ``--recipe`` is not given;
6. explicit CLI flags (``--model``, ``--hidden``, ``--seed``, ...);
7. ``--set key=value`` overrides (dotted keys, values parsed as YAML scalars).

Unknown keys and values of the wrong type are rejected with the list of valid keys, and values outside
their range (nernfast.config_checks) with the key, the value and the range. The resolved
config is saved with every run (``OUT/config.yaml``) and inside the artefact.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

RECIPES = ("recon_only", "progressive", "baseline", "decoupled", "teacher_decoupled", "noise_decoupled")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message lists what is valid."""


@dataclass
class NeRNConfig:
    hidden: int = 140
    num_blocks: int = 5
    permutation: str = "infilter"
    # The public reference computes normalised indices but encodes the raw integer ones, which is
    # what its base-0.76, 40-level encoding is tuned for (wavelengths 2 .. ~10^5 indices); with
    # coordinates in [0, 1] the same encoding is nearly constant across rows and the predictor
    # cannot fit (digits ResNet-20, H140, Adam 3000 steps: 0.70x vs 0.98x the all-zero error).
    normalization: str = "none"
    encoding: str = "basic"
    levels: int = 40
    base: float = 0.76
    ffn_features: int = 120
    ffn_sigma: float = 1.0
    ffn_seed: int = 0                    # seed of the ffn encoding's fixed random matrix
    init: str = "default"
    # Which convs are predicted (nernfast.selection): regular expressions on module names; None: the
    # reference's choice for the architecture. Unpredicted convs are kept as they are in the artefact.
    include: list[str] | None = None
    exclude: list[str] | None = None
    smaller_kernels: bool | None = None  # also predict square kernels smaller than the largest
    kernel_size: int | None = None       # predicted kernel size; None: the largest selected one


@dataclass
class PhaseConfig:
    """One phase = objective + optimiser + schedule + data source + stopping rule."""
    name: str = "phase"
    steps: int = 1000
    optimizer: str = "ranger"
    lr: float = 5e-3
    weight_decay: float = 1e-3
    schedule: str = "cosine"             # cosine | constant
    lr_warmup_steps: int = 0             # linear learning-rate warm-up before the schedule
    recon_loss: str = "l2"               # l2 (NeRN's L2Loss) | mse
    l2_scale_every: int = 0              # steps between re-measurements of the l2 loss's scale (the full
                                         # reconstruction error; nernfast.training.objectives); 0: at evaluations
    recon_weight: float = 1.0
    fmd_weight: float = 0.0              # alpha: feature-map distillation
    kd_weight: float = 0.0               # beta: logit distillation
    kd_loss: str = "stable_kl"           # kl | stable_kl
    temperature: float = 1.0
    warmup_steps: int = 0                # reconstruction-only steps before the distillation terms
    data: str = "none"                   # none (weights only) | dataset | noise
    distill_from: str = "original"       # original | teacher
    batch_size: int = 128
    augment: bool = True
    bn_recalibration: int = 0            # before the phase: re-estimate the rebuilt network's BN statistics
                                         # on this many unaugmented training batches (0: keep the original's)
    bn_batch_stats: bool = False         # the rebuilt network's BN layers normalise with each image batch's
                                         # statistics during the steps (training mode), their running
                                         # statistics follow by momentum and are kept with the predictor
    noise_low: float = -2.0
    noise_high: float = 2.0
    weights_batch_method: str = "random_weighted_batch"
    weights_batch_size: int = 4096
    eval_every: int = 250
    select: str = "val_acc"              # val_acc | recon_l2 | last | noise_kd (nernfast.training.phase)
    patience: int = 0                    # evaluations without improvement before stopping (0: never)
    ema_decay: float = 0.0               # > 0: keep an exponential moving average of the predictor's weights
                                         # (this decay per step); evaluations score and keep the average, the
                                         # raw weights' validation scores are recorded beside it (raw_val_*)
    checkpoint_every: int = 250


@dataclass
class ProgressiveConfig:
    rounds: int = 3
    seeds: int = 2
    all_rounds: bool = True   # run every round even after one stops improving (reported, never kept)
    bn_recalibration: int = 0  # each round's network gets BN statistics re-estimated on this many training
                               # batches: every evaluation scores with them, the next round inherits the kept's


@dataclass
class EvalConfig:
    batch_size: int = 256
    fgsm_eps: float | None = None        # None: the dataset's default (nernfast.eval.metrics.attack_defaults)
    ifgsm_eps: float | None = None
    ifgsm_steps: int | None = None
    ood: bool = True                     # CIFAR-C/ImageNet-R when on disk, else the built-in corruption suite
    attacks: bool = True                 # FGSM and I-FGSM


@dataclass
class RunConfig:
    recipe: str = "teacher_decoupled"
    model: str = "resnet20"
    dataset: str = "digits"
    data_root: str | None = None
    original: str | None = None          # checkpoint or nernfast artefact; None: pretrain (cached)
    teacher: str | None = None           # NAME[:CKPT]; None: the dataset's default teacher (pretrained, cached)
    pretrain_epochs: int | None = None   # for originals/teachers trained here; None: pretrain's default
    init_from: str | None = None
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    # auto | float32 | bf16 (autocast: predictor compute and data-phase CNNs). auto: bf16 on CPUs with
    # native bf16 (AVX-512 BF16/AMX), else float32; the rule and its measurements: nernfast.numerics.
    precision: str = "auto"
    channels_last: bool | None = None    # None: on exactly when the resolved precision is bf16 on the CPU
    share_phase1: bool = True            # reuse an identical earlier run's phase 1 (nernfast.training.shared)
    # The kept network's BN statistics re-estimated for its own weights on this many unaugmented training
    # batches (nernfast.bn_stats); the run is scored, and its artefact written, with them. 0: keep the
    # statistics the last phase left (the original's, unless the phase measured its own). Progressive does
    # this per round instead (progressive.bn_recalibration).
    bn_recalibration_end: int = 0
    # With either re-estimation on, a phase that selects by validation accuracy scores every evaluation with
    # statistics re-estimated for the network it scores (the kept step: the best network as delivered; ~5 s
    # per evaluation for ResNet-20 on Fashion-MNIST, one core). false: the step is chosen on the statistics it
    # inherits and re-estimated once, after the phase.
    bn_score_every_eval: bool = True
    nern: NeRNConfig = field(default_factory=NeRNConfig)
    phase1: PhaseConfig = field(default_factory=lambda: PhaseConfig(name="reconstruction"))
    phase2: PhaseConfig = field(default_factory=lambda: PhaseConfig(name="distillation"))
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += _valid_keys(t, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if type(None) in args and (value is None or isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.lstrip().startswith("[") else [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{key}: expected a list of strings, e.g. [conv1, 'layer1\\..*'], got {value!r}")
    if isinstance(value, str) and typ is not str:
        try:
            value = float(value) if typ is float else yaml.safe_load(value)
        except (ValueError, yaml.YAMLError):
            pass
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and isinstance(value, bool) or typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ in (str, float) and isinstance(value, typ):
        return value
    if typ is str and isinstance(value, (int, float)):
        return str(value)
    raise ConfigError(f"{key}: expected {getattr(typ, '__name__', typ)}, got {value!r} ({type(value).__name__})")


def apply(cfg: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested dict of updates to a dataclass in place, type-checked."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in fields(cfg)}
    for k, v in updates.items():
        if k not in names:
            raise ConfigError(f"unknown config key {prefix + k!r}; valid keys: "
                              + ", ".join(_valid_keys(type(cfg), prefix)))
        t = hints[k]
        if dataclasses.is_dataclass(t):
            if not isinstance(v, dict):
                raise ConfigError(f"{prefix + k}: expected a mapping of {', '.join(_valid_keys(t))}")
            apply(getattr(cfg, k), v, f"{prefix}{k}.")
        else:
            setattr(cfg, k, _coerce(v, t, prefix + k))


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["phase2.lr=1e-3", ...]`` -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


PHASE_KEYS = ("phase1", "phase2")


def _shipped(name: str) -> Path:
    return Path(str(resources.files("nernfast") / "configs" / name))


def _check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")


def recipe_yaml(recipe: str) -> Path:
    _check_recipe(recipe)
    return _shipped(f"{recipe}.yaml")


def _read_yaml(p: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}; fix the file or pass another --config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the config file ({e}); pass a readable YAML file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A ``--config`` file: a path, or the name of a shipped dataset-level config."""
    p = Path(path)
    if not p.exists():
        shipped = _shipped(p.name)
        if shipped.exists() and p.name not in _RECIPE_FILES:
            p = shipped
        else:
            raise ConfigError(f"config file {path} not found (shipped configs: " + ", ".join(shipped_configs()) + ")")
    return _read_yaml(p)


_RECIPE_FILES = {f"{r}.yaml" for r in RECIPES} | {"defaults.yaml"}


def shipped_configs() -> list[str]:
    """The dataset-level configs that ship with nernfast (for ``--config``)."""
    return sorted(x.name for x in _shipped("").glob("*.yaml") if x.name not in _RECIPE_FILES)


def _recipe_file(recipe: str) -> tuple[list[str], dict[str, Any]]:
    """(the phase defaults the recipe's phases start from, its differences from them)."""
    data = _read_yaml(recipe_yaml(recipe))
    phases = data.pop("phases", None)
    if not isinstance(phases, list) or not 1 <= len(phases) <= len(PHASE_KEYS):
        raise ConfigError(f"{recipe_yaml(recipe)}: 'phases' must list 1 or {len(PHASE_KEYS)} phase defaults")
    return phases, data


def recipe_phases(recipe: str) -> tuple[str, ...]:
    """The phases a recipe runs, in order: ``("phase1",)`` or ``("phase1", "phase2")``."""
    return PHASE_KEYS[:len(_recipe_file(recipe)[0])]


def _apply_file(cfg: RunConfig, data: dict[str, Any], where: str) -> None:
    try:
        apply(cfg, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def resolve(recipe: str | None = None, config: str | Path | None = None, sets: list[str] | None = None,
            **cli: Any) -> RunConfig:
    """Defaults <- defaults.yaml <- phase defaults <- recipe YAML <- --config (all recipes, then
    per_recipe) <- explicit CLI flags <- --set overrides (see the module docstring).

    ``cli`` holds top-level keys (``model=...``) or nested mappings (``nern={"hidden": 280}``);
    None values are ignored."""
    file_data = load_yaml(config) if config else {}
    per_recipe = file_data.pop("per_recipe", None) or {}
    for key in ("phases", "phase_defaults"):
        if key in file_data:
            raise ConfigError(f"{config}: '{key}' belongs to the shipped recipe files; set phase1.* / phase2.* "
                              "(or per_recipe: {<recipe>: {phase1: ...}}) instead")
    if not isinstance(per_recipe, dict) or any(r not in RECIPES for r in per_recipe):
        raise ConfigError(f"{config}: per_recipe must map recipe names ({', '.join(RECIPES)}) to config values")
    recipe = recipe or file_data.get("recipe") or RunConfig.recipe
    _check_recipe(recipe)
    cfg = RunConfig()
    shared = _read_yaml(_shipped("defaults.yaml"))
    templates = shared.pop("phase_defaults")
    apply(cfg, shared)
    phases, differences = _recipe_file(recipe)
    for key, name in zip(PHASE_KEYS, phases):
        if name not in templates:
            raise ConfigError(f"{recipe_yaml(recipe)}: unknown phase defaults {name!r}; defaults.yaml defines "
                              + ", ".join(templates))
        apply(cfg, {key: templates[name]})
    apply(cfg, differences)
    _apply_file(cfg, file_data, str(config))
    _apply_file(cfg, per_recipe.get(recipe) or {}, f"{config}: per_recipe.{recipe}")
    cfg.recipe = recipe
    apply(cfg, {k: v for k, v in cli.items() if v is not None})
    apply(cfg, parse_set(sets or []))
    _check_recipe(cfg.recipe)
    from .config_checks import check
    check(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = RunConfig()
    apply(cfg, data)
    return cfg

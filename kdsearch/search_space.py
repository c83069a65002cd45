"""Search spaces are plain YAML: fixed settings, a space of distributions, search settings.

    name: kd-digits                       # optional; the sweep's default name
    fixed:                                # TrainConfig keys (method settings go flat too)
      method: kd
      dataset: digits
      epochs: 12
    space:                                # each key: a distribution, a list of them, or a value
      temperature: {loguniform: [1, 20]}
      alpha: {uniform: [0, 1]}
      lr: {loguniform: [1e-2, 2e-1]}
      weights: [{uniform: [0, 2]}, {uniform: [0, 2]}, 1.0]   # AT: one weight per stage
    search:
      num_samples: 8
      metric: val/acc                     # or objectives: [{val/acc: max}, {student/params: min}]
      mode: max
      sampler: tpe                        # tpe | random | nsga2 (several objectives) | grid (every
                                          # combination of choice lists, each once)
      scheduler: asha                     # asha | fifo
      grace_period: 3                     # ASHA's first rung, in epochs (default: at 80% of the
                                          # epochs; earlier rungs judge one-cycle trials on noise)
      reduction_factor: 2
      seed: 0

A key names a TrainConfig field or, failing that, a setting of the method. Everything
here is validated before any trial starts; a mistake is one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdsearch.config import TrainConfig
from kdsearch.values import load_yaml
from kdsearch.data import DATASETS
from kdsearch.errors import UserError
from kdsearch.methods import check_method, method_class, method_settings
from kdsearch.models import MODELS
from kdsearch.models.imported import is_import_path

LATE_RUNG = 0.8  # where ASHA's first rung goes by default, as a share of a trial's epochs
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("tpe", "random", "nsga2", "grid")
SCHEDULERS = ("asha", "fifo")
# One sweep shares one dataset and one teacher; these cannot vary between trials.
# The data (and its subset) and the teacher are prepared once in the driver for all trials:
# a value drawn per trial would be recorded but never used.
NOT_SEARCHABLE = (
    *("method", "dataset", "data_dir", "download", "image_size", "val_fraction", "split_seed", "train_subset"),
    *("teacher", "teacher_width", "teacher_checkpoint", "teacher_sha256", "teacher_epochs", "teacher_lr"),
    *("teacher_batch_size", "teacher_seed", "cache_dir", "device", "threads", "epochs"),
)
# Metrics a trial reports that a search may optimise.
METRICS = ("val/acc", "val/loss", "student/params", "student/flops", "student/size_mb", "latency/cpu_ms")


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 8
    max_concurrent: int | None = None
    objectives: tuple[tuple[str, str], ...] = (("val/acc", "max"),)
    sampler: str = "tpe"
    n_startup_trials: int | None = None  # None: a third of the budget, at least 1, at most 10
    scheduler: str = "asha"
    grace_period: int | None = None  # None: one rung, at LATE_RUNG of the epochs (first_rung)
    reduction_factor: int = 2
    seed: int = 0
    max_failures: int = 1  # retries of a trial that raised, from its last checkpoint

    @property
    def metric(self) -> str:
        return self.objectives[0][0]

    @property
    def mode(self) -> str:
        return self.objectives[0][1]

    def first_rung(self, epochs: int) -> int:
        """The epoch of ASHA's first rung. By default late, at 80% of a trial's epochs: under the
        one-cycle schedule a trial's accuracy after 20% or 40% of its epochs ranked trials by
        their final accuracy with a rank correlation of 0.17 and -0.16, after 60% 0.53, after
        80% 0.81 (benchmarks/results/search-efficiency/rungs.csv): an earlier rung stops trials on
        noise, and the learning rates that end best look worst early."""
        if self.grace_period is not None:
            return min(self.grace_period, epochs)
        return max(1, min(epochs, round(LATE_RUNG * epochs)))

    def startup_trials(self) -> int:
        return self.n_startup_trials if self.n_startup_trials is not None else max(1, min(10, self.num_samples // 3))


@dataclass(frozen=True)
class SweepSpec:
    source: str
    name: str
    fixed: dict  # TrainConfig keys, method settings collected under method_args
    space: dict[str, dict]  # flat parameter name -> {"kind": ..., "args": [...]}
    search: SearchSettings
    list_params: dict[str, list] = field(default_factory=dict)  # "weights" -> [item or "weights.0", ...]

    def trial_config(self, sampled: dict[str, Any]) -> TrainConfig:
        """Merge one trial's sampled values into the fixed settings."""
        values = dict(self.fixed)
        method_args = dict(values.pop("method_args", {}))
        assembled = dict(sampled)
        for key, items in self.list_params.items():  # e.g. weights: [weights.0, weights.1, 1.0]
            drawn = [i for i in items if isinstance(i, str) and i in self.space]
            if any(i not in assembled for i in drawn):
                continue  # not drawn here (fixed_config): the method's default
            assembled[key] = [assembled.pop(i) if i in drawn else i for i in items]
        for key, value in assembled.items():
            if key in _CONFIG_FIELDS:
                values[key] = value
            else:
                method_args[key] = value
        return TrainConfig.from_dict({**values, "method_args": method_args}, source=self.source)

    def fixed_config(self) -> TrainConfig:
        """The resolved fixed settings alone (defaults where the space would vary them): what
        the shared teacher is trained with, so it does not depend on the search space."""
        return self.trial_config({})

    def example_config(self) -> TrainConfig:
        """The resolved config of a trial that draws the first value of every distribution."""
        return self.trial_config({key: dist["args"][0] for key, dist in self.space.items()})


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _check_distribution(spec: Any, where: str) -> dict | None:
    """A ``{kind: args}`` mapping as a checked distribution, or None for a fixed value."""
    if not isinstance(spec, dict):
        return None
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise UserError(f"{where}: a distribution is one of {', '.join(f'{{{d}: [...]}}' for d in DISTRIBUTIONS)}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise UserError(f"{where}: {kind} needs a list, e.g. {{{kind}: [1, 10]}}")
    if kind == "choice":
        return {"kind": kind, "args": list(args)}
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise UserError(f"{where}: {kind} needs two numbers [low, high], got {args!r}")
    low, high = args
    if not low < high:
        raise UserError(f"{where}: {kind} bounds must be [low, high] with low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform bounds must be > 0, got [{low}, {high}]; use uniform for ranges that include 0")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise UserError(f"{where}: int bounds must be integers, got [{low}, {high}]")
    return {"kind": kind, "args": [int(low), int(high)] if kind == "int" else [float(low), float(high)]}


def _objectives(search: dict, source: str) -> tuple[tuple[str, str], ...]:
    raw = search.pop("objectives", None)
    if raw is None:
        metric, mode = search.pop("metric", "val/acc"), search.pop("mode", "max")
        raw = [{metric: mode}]
    elif "metric" in search or "mode" in search:
        raise UserError(f"{source}: search: give either metric/mode or objectives, not both")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{source}: search.objectives must be a list like [{{val/acc: max}}, {{student/params: min}}]")
    out = []
    for item in raw:
        if not isinstance(item, dict) or len(item) != 1:
            raise UserError(f"{source}: search.objectives items look like {{val/acc: max}}, got {item!r}")
        metric, mode = next(iter(item.items()))
        if metric == "val/best_acc":
            raise UserError(
                f"{source}: search: val/best_acc never decreases, so it cannot tell which epoch's checkpoint is best; "
                "use metric: val/acc (each trial keeps its best epoch's checkpoint)"
            )
        if metric not in METRICS:
            raise UserError(f"{source}: search: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if mode not in ("max", "min"):
            raise UserError(f"{source}: search: mode for {metric} must be max or min, got {mode!r}")
        out.append((metric, mode))
    return tuple(out)


def _search_settings(raw: Any, source: str) -> SearchSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: search must be a mapping of search settings")
    raw = dict(raw)
    objectives = _objectives(raw, source)
    names = [f.name for f in dataclasses.fields(SearchSettings) if f.name != "objectives"]
    values: dict[str, Any] = {"objectives": objectives}
    for key, value in raw.items():
        if key not in names:
            raise UserError(f"{source}: unknown key 'search.{key}'; valid keys are metric, mode, objectives, {', '.join(names)}")
        if key in ("sampler", "scheduler"):
            choices = SAMPLERS if key == "sampler" else SCHEDULERS
            if value not in choices:
                raise UserError(f"{source}: search.{key} {value!r} is unknown; choose one of {', '.join(choices)}")
        elif value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < (0 if key in ("seed", "max_failures") else 1)
        ):
            raise UserError(f"{source}: search.{key} must be a positive integer, got {value!r}")
        values[key] = value
    settings = SearchSettings(**values)
    if len(objectives) > 1 and settings.sampler == "tpe":
        settings = dataclasses.replace(settings, sampler="nsga2")  # TPE here is single-objective
    if len(objectives) == 1 and settings.sampler == "nsga2":
        raise UserError(f"{source}: search.sampler nsga2 needs two or more objectives; use tpe for one")
    return settings


def parse_sweep(raw: Any, source: str) -> SweepSpec:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a search space is a mapping with fixed, space and search sections")
    unknown = set(raw) - {"name", "fixed", "space", "search"}
    if unknown:
        raise UserError(f"{source}: unknown key {sorted(unknown)[0]!r}; valid top-level keys are name, fixed, space, search")
    fixed_raw = raw.get("fixed") or {}
    space_raw = raw.get("space") or {}
    if not isinstance(fixed_raw, dict) or not isinstance(space_raw, dict):
        raise UserError(f"{source}: fixed and space must be mappings of settings")
    method = fixed_raw.get("method", TrainConfig.method)
    try:
        method_class(method)
    except UserError as exc:
        raise UserError(f"{source}: fixed.method: {exc}") from None
    settings = method_settings(method)

    def route(key: str, where: str) -> str:
        if key in _CONFIG_FIELDS and key != "method_args":
            return "config"
        if key in settings:
            return "method"
        raise UserError(
            f"{where}: unknown key {key!r}; not a training setting nor a setting of method {method!r} ({', '.join(settings) or 'none'})"
        )

    fixed: dict[str, Any] = {"method_args": dict(fixed_raw.get("method_args") or {})}
    for key, value in fixed_raw.items():
        if key == "method_args":
            continue
        if route(key, f"{source}: fixed") == "method":
            fixed["method_args"][key] = value
        else:
            fixed[key] = value
    space: dict[str, dict] = {}
    list_params: dict[str, list] = {}
    for key, value in space_raw.items():
        where = f"{source}: space.{key}"
        route(key, f"{source}: space")
        if key in NOT_SEARCHABLE:
            raise UserError(f"{where}: {key} cannot vary within a sweep; put it under fixed (one sweep per {key})")
        if isinstance(value, list) and any(isinstance(v, dict) for v in value):
            items = []
            for i, item in enumerate(value):
                dist = _check_distribution(item, f"{where}[{i}]")
                if dist is None:
                    items.append(item)
                else:
                    space[f"{key}.{i}"] = dist
                    items.append(f"{key}.{i}")
            list_params[key] = items
            continue
        dist = _check_distribution(value, where)
        if dist is None:
            raise UserError(f"{where}: expected a distribution like {{uniform: [0, 1]}}; put fixed values under fixed")
        space[key] = dist
    search = _search_settings(raw.get("search"), source)
    if search.sampler == "grid":
        search = _grid_settings(space, search, raw.get("search") or {}, source)
    name = raw.get("name") or Path(source).stem
    try:
        check_sweep_name(name)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    spec = SweepSpec(source=source, name=name, fixed=fixed, space=space, search=search, list_params=list_params)
    _check_names(spec)
    return spec


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_sweep_name(name: object) -> str:
    """A sweep name is one folder name and an MLflow experiment: letters, digits, '_', '-' and '.'
    (not first), at most 100 characters. '../x' or 'a/b' would write outside the storage folder."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise UserError(
            f"sweep name {name!r} must be letters, digits, '_', '-' and '.' (one folder name, not starting with '.'): "
            "pass e.g. --name cifar10-kd-2"
        )
    return name


def grid_size(space: dict) -> int:
    size = 1
    for dist in space.values():
        size *= len(dist["args"])
    return size


def _grid_settings(space: dict, search: SearchSettings, raw: dict, source: str) -> SearchSettings:
    """A grid runs every combination of the choice lists once: num_samples is its size."""
    for key, dist in space.items():
        if dist["kind"] != "choice":
            raise UserError(
                f"{source}: space.{key}: search.sampler grid needs every entry to be a choice list, got {dist['kind']}; "
                f"write {{choice: [...]}} or use sampler tpe or random"
            )
    if not space:
        raise UserError(f"{source}: search.sampler grid needs a space of choice lists to enumerate")
    size = grid_size(space)
    if "num_samples" in raw and raw["num_samples"] != size:
        raise UserError(
            f"{source}: search.num_samples is {raw['num_samples']} but the grid has {size} combinations; "
            "drop num_samples (a grid runs each combination once)"
        )
    return dataclasses.replace(search, num_samples=size)


def _check_names(spec: SweepSpec) -> None:
    """Build a config from the first value of each distribution, so that an unknown
    dataset, model, option or a wrong type stops the sweep before any trial."""
    try:
        cfg = spec.example_config()
    except UserError as exc:
        message = str(exc)
        raise UserError(message if message.startswith(spec.source) else f"{spec.source}: {message}") from None
    for field_name in ("student", "teacher"):
        arch = getattr(cfg, field_name)
        if arch not in MODELS and not is_import_path(arch):  # import paths are imported when the sweep is planned
            raise UserError(
                f"{spec.source}: {field_name}: unknown architecture {arch!r}; choose one of {', '.join(sorted(MODELS))}, "
                "or name your own as module:Name"
            )
    if cfg.dataset not in DATASETS:
        raise UserError(f"{spec.source}: dataset: unknown dataset {cfg.dataset!r}; choose one of {', '.join(sorted(DATASETS))}")
    try:
        check_method(cfg.method, cfg.method_args, cfg.epochs)
    except UserError as exc:
        raise UserError(f"{spec.source}: {exc}") from None


def load_sweep(path: str | Path | dict, overrides: dict | None = None) -> SweepSpec:
    """Parse a search-space file (or the same as a dict, from Python); ``overrides`` (``kdsearch
    sweep --set KEY=VALUE``, ``--data-dir``) fix settings over the file's, a searched one included
    (it is then no longer searched)."""
    raw = dict(path) if isinstance(path, dict) else load_yaml(path)
    path = "sweep" if isinstance(path, dict) else path  # a dict without a name: the sweep is called "sweep"
    if overrides and isinstance(raw, dict):
        raw = dict(raw)
        raw["fixed"] = {**(raw.get("fixed") or {}), **overrides}
        if isinstance(raw.get("space"), dict):
            raw["space"] = {k: v for k, v in raw["space"].items() if k not in overrides}
    return parse_sweep(raw, str(path))

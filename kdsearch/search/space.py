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
      checkpoint_every: 5                 # also checkpoint every 5 epochs (default: only at ASHA's
                                          # rungs and a trial's end; a resume restarts from there)
      seed: 0

A key names a TrainConfig field or, failing that, a setting of the method. Everything
here is validated before any trial starts; a mistake is one line naming the file and key.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdsearch.config import TrainConfig
from kdsearch.data import DATASETS
from kdsearch.errors import UserError
from kdsearch.methods import check_method, method_class, method_settings
from kdsearch.models import MODELS
from kdsearch.models.imported import is_import_path
from kdsearch.search.record import Objective
from kdsearch.settings.distributions import MISSING, check_distribution, fill, grid, make_template, params_of
from kdsearch.settings.schedules import has_schedule
from kdsearch.settings.typed import load_yaml

LATE_RUNG = 0.8  # where ASHA's first rung goes by default, as a share of a trial's epochs
SAMPLERS = ("tpe", "random", "nsga2", "grid")
SCHEDULERS = ("asha", "fifo")
# One sweep shares one dataset and one teacher; these cannot vary between trials.
# The data (and its subset) and the teacher are prepared once in the driver for all trials:
# a value drawn per trial would be recorded but never used.
NOT_SEARCHABLE = (
    *("dataset", "data_dir", "download", "image_size", "val_fraction", "split_seed", "train_subset"),
    *("teacher", "teacher_width", "teacher_checkpoint", "teacher_sha256", "teacher_epochs", "teacher_lr"),
    *("teacher_batch_size", "teacher_seed", "cache_dir", "device", "threads", "epochs"),
)
# Metrics a trial reports that a search may optimise.
METRICS = ("val/acc", "val/loss", "student/params", "student/flops", "student/size_mb", "latency/cpu_ms")


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 8
    max_concurrent: int | None = None
    objectives: tuple[Objective, ...] = (Objective("val/acc", "max"),)
    sampler: str = "tpe"
    n_startup_trials: int | None = None  # None: a third of the budget, at least 1, at most 10
    scheduler: str = "asha"
    grace_period: int | None = None  # None: one rung, at LATE_RUNG of the epochs (first_rung)
    reduction_factor: int = 2
    checkpoint_every: int | None = None  # None: a trial checkpoints at ASHA's rungs and at its end only
    seed: int = 0
    max_failures: int = 1  # retries of a trial that raised, from its last checkpoint

    @property
    def objective(self) -> Objective:
        """The first objective: the one a trial's score, ASHA and the best trial go by."""
        return self.objectives[0]

    @property
    def metric(self) -> str:
        return self.objective.metric

    @property
    def mode(self) -> str:
        return self.objective.mode

    def first_rung(self, epochs: int) -> int:
        """The epoch of ASHA's first rung. By default late, at 80% of a trial's epochs: under the
        one-cycle schedule a trial's accuracy after 20% or 40% of its epochs ranked trials by
        their final accuracy with a rank correlation of 0.17 and -0.16, after 60% 0.53, after
        80% 0.81 (benchmarks/results/search-efficiency/rungs.csv): an earlier rung stops trials on
        noise, and the learning rates that end best look worst early."""
        if self.grace_period is not None:
            return min(self.grace_period, epochs)
        return max(1, min(epochs, round(LATE_RUNG * epochs)))

    def checkpoint_epochs(self, epochs: int) -> set[int]:
        """The epochs after which a trial checkpoints before its last (which always does): ASHA's
        rungs, where a stopped trial ends, and every ``checkpoint_every`` epochs when set. Fewer
        checkpoints write fewer bytes, and Ray Tune saves its whole experiment state (every trial)
        at each one: benchmarks/results/many-trials.md measured that growing with the sweep."""
        out = set(range(self.checkpoint_every, epochs, self.checkpoint_every)) if self.checkpoint_every else set()
        if self.scheduler == "asha":
            rung = self.first_rung(epochs)
            while rung < epochs:
                out.add(rung)
                rung *= self.reduction_factor
        return out

    def startup_trials(self) -> int:
        return self.n_startup_trials if self.n_startup_trials is not None else max(1, min(10, self.num_samples // 3))


@dataclass(frozen=True)
class SweepSpec:
    source: str
    name: str
    fixed: dict  # TrainConfig keys, method settings collected under method_args
    space: dict[str, dict]  # flat parameter name -> {"kind", "args"[, "when"]}
    search: SearchSettings
    # setting -> {"method": its method when the method is searched, else None; "name"; "template"}
    templates: dict[str, dict] = field(default_factory=dict)
    per_method: dict[str, dict] = field(default_factory=dict)  # method -> its fixed settings (method searched)

    @property
    def methods(self) -> list[str]:
        """The methods a trial may train with: the searched choices, or the one fixed."""
        dist = self.space.get("method")
        return list(dist["args"]) if dist is not None else [self.fixed.get("method", TrainConfig.method)]

    def fixed_settings(self) -> dict[str, Any]:
        """What every trial shares, as Ray Tune's config carries it under ``FIXED_KEY`` (so that
        Ray's ExperimentAnalysis shows it): the spec's fixed section, and the method, dataset,
        teacher and student each trial trains with unless they are searched."""
        example = self.example_config()
        shown = {k: getattr(example, k) for k in ("method", "dataset", "teacher", "student") if k not in self.space}
        return {**shown, **self.fixed}

    def trial_config(self, sampled: dict[str, Any]) -> TrainConfig:
        """Merge one trial's sampled values into the fixed settings: a template whose values were
        not all drawn (fixed_config, another method's settings) leaves its setting to the default."""
        values = dict(self.fixed)
        method_args = dict(values.pop("method_args", {}))
        method = sampled.get("method", self.methods[0])
        if "method" in self.space:
            values["method"] = method
            method_args.update(self.per_method.get(method, {}))
        for entry in self.templates.values():
            if entry["method"] not in (None, method):
                continue
            value = fill(entry["template"], sampled)
            if value is MISSING:
                continue
            if entry["method"] is None and entry["name"] in _CONFIG_FIELDS:
                values[entry["name"]] = value
            else:
                method_args[entry["name"]] = value
        return TrainConfig.from_dict({**values, "method_args": method_args}, source=self.source)

    def fixed_config(self) -> TrainConfig:
        """The resolved fixed settings alone (defaults where the space would vary them): what
        the shared teacher is trained with, so it does not depend on the search space."""
        return self.trial_config({})

    def example_config(self, method: str | None = None) -> TrainConfig:
        """The resolved config of a trial that draws the first value of every distribution (and
        ``method``, when given and searched)."""
        first = {key: dist["args"][0] for key, dist in self.space.items()}
        if method is not None and "method" in self.space:
            first["method"] = method
        return self.trial_config(first)


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _objectives(search: dict, source: str) -> tuple[Objective, ...]:
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
        out.append(Objective(metric, mode))
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
    methods = _methods(fixed_raw, space_raw, source)
    searched = "method" in space_raw
    space: dict[str, dict] = {}
    if searched:
        space["method"] = {"kind": "choice", "args": methods}
    fixed: dict[str, Any] = {"method_args": dict(fixed_raw.get("method_args") or {})}
    per_method: dict[str, dict] = {}
    for key, value in fixed_raw.items():
        if key == "method_args":
            continue
        if searched and key in methods:
            per_method[key] = _section(value, key, f"{source}: fixed.{key}")
        elif _route(key, methods[0] if not searched else None, f"{source}: fixed") == "method":
            fixed["method_args"][key] = value
        else:
            fixed[key] = value
    templates = _templates(space_raw, methods, searched, space, fixed, source)
    search = _search_settings(raw.get("search"), source)
    if search.sampler == "grid":
        search = _grid_settings(space, search, raw.get("search") or {}, source)
    name = raw.get("name") or Path(source).stem
    try:
        check_sweep_name(name)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    spec = SweepSpec(source, name, fixed, space, search, templates, per_method)
    _check_names(spec)
    return spec


def _templates(space_raw: dict, methods: list[str], searched: bool, space: dict, fixed: dict, source: str) -> dict:
    """Each ``space`` setting as a template (its distributions into ``space``): a searched
    method's own settings under its name, drawn only with it; a schedule with nothing searched
    in it goes to ``fixed``."""
    templates: dict[str, dict] = {}
    for key, value in space_raw.items():
        if key == "method":
            continue
        if searched and key in methods:
            when = {"param": "method", "in": [key]}
            for name, inner in _section(value, key, f"{source}: space.{key}").items():
                template = make_template(inner, f"{key}.{name}", f"{source}: space.{key}.{name}", space, when)
                templates[f"{key}.{name}"] = {"method": key, "name": name, "template": template}
            continue
        route = _route(key, methods[0] if not searched else None, f"{source}: space")
        if key in NOT_SEARCHABLE:
            raise UserError(f"{source}: space.{key}: {key} cannot vary within a sweep; put it under fixed (one sweep per {key})")
        template = make_template(value, key, f"{source}: space.{key}", space)
        if not params_of(template):
            if not has_schedule(value):
                raise UserError(
                    f"{source}: space.{key}: expected a distribution like {{uniform: [0, 1]}}; put fixed values under fixed"
                )
            if route == "method":  # a schedule with nothing searched in it: a fixed setting
                fixed["method_args"][key] = value
            else:
                fixed[key] = value
            continue
        templates[key] = {"method": None, "name": key, "template": template}
    return templates


def _methods(fixed_raw: dict, space_raw: dict, source: str) -> list[str]:
    """The method a sweep trains with, or those it compares (``space.method: {choice: [...]}``)."""
    if "method" in space_raw:
        if "method" in fixed_raw:
            raise UserError(f"{source}: method is both fixed and searched: drop fixed.method or space.method")
        dist = check_distribution(space_raw["method"], f"{source}: space.method")
        if dist["kind"] != "choice":
            raise UserError(f"{source}: space.method: methods are compared as a choice, e.g. {{choice: [ce, kd, at, dkd]}}")
        methods = list(dist["args"])
    else:
        methods = [fixed_raw.get("method", TrainConfig.method)]
    for method in methods:
        try:
            method_class(method)
        except UserError as exc:
            raise UserError(f"{source}: {'space' if 'method' in space_raw else 'fixed'}.method: {exc}") from None
    return methods


def _route(key: str, method: str | None, where: str) -> str:
    """Whether a flat key is a training setting ("config") or the fixed method's ("method")."""
    if key in _CONFIG_FIELDS and key != "method_args":
        return "config"
    if method is None:
        raise UserError(
            f"{where}: unknown key {key!r}; the method is searched, so a method's settings go under its name, "
            f"e.g. kd: {{{key}: ...}}"
        )
    settings = method_settings(method)
    if key in settings:
        return "method"
    raise UserError(
        f"{where}: unknown key {key!r}; not a training setting nor a setting of method {method!r} ({', '.join(settings) or 'none'})"
    )


def _section(value: Any, method: str, where: str) -> dict:
    """A searched method's own settings (``kd: {temperature: ...}``), each one of its settings."""
    if not isinstance(value, dict):
        raise UserError(f"{where}: the settings of method {method} are a mapping, e.g. {method}: {{...}}")
    settings = method_settings(method)
    for key in value:
        if key not in settings:
            raise UserError(
                f"{where}: method {method!r} has no setting {key!r}: its settings are {', '.join(settings) or 'none'}"
            )
    return dict(value)


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
    return len(grid(space))


def _grid_settings(space: dict, search: SearchSettings, raw: dict, source: str) -> SearchSettings:
    """A grid runs every combination of the choice lists once (a method's with that method
    alone): num_samples is its size."""
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
        configs = [spec.example_config(method) for method in spec.methods]
    except UserError as exc:
        message = str(exc)
        raise UserError(message if message.startswith(spec.source) else f"{spec.source}: {message}") from None
    cfg = configs[0]
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
        for each in configs:
            check_method(each.method, each.method_args, each.epochs)
        _check_schedule_corners(spec)
    except UserError as exc:
        raise UserError(f"{spec.source}: {exc}") from None


def _check_schedule_corners(spec: SweepSpec) -> None:
    """A searched schedule must stay in its setting's range for every draw: checked at each
    corner of its own distributions' bounds (every value of a choice), the rest at their first."""
    first = {key: dist["args"][0] for key, dist in spec.space.items()}
    for entry in spec.templates.values():
        if not has_schedule(fill(entry["template"], first)):
            continue
        own = params_of(entry["template"])
        bounds = [spec.space[p]["args"] if spec.space[p]["kind"] == "choice" else spec.space[p]["args"][:2] for p in own]
        for corner in itertools.product(*bounds):
            drawn = {**first, **dict(zip(own, corner))}
            if entry["method"] is not None:
                drawn["method"] = entry["method"]
            cfg = spec.trial_config(drawn)
            check_method(cfg.method, cfg.method_args, cfg.epochs)


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

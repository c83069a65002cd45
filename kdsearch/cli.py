"""The ``kdsearch`` command line. Every user-fixable problem ends in one line and exit status 2.

Each command imports what it runs inside its own function: ``--help`` and a mistyped flag answer
at once, without loading torch, Ray or MLflow (``tests/test_cli.py`` holds that).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import sys
import tempfile
import typing
from pathlib import Path

import yaml

from kdsearch.config import TrainConfig, read_config_yaml
from kdsearch.errors import UserError
from kdsearch.runtime import interrupts
from kdsearch.runtime.interrupts import Interrupted
from kdsearch.settings.typed import parse_value
from kdsearch.sweeper.summary import format_summary, format_sweep_summary
from kdsearch.tracking.uri import default_tracking_uri


class _Parser(argparse.ArgumentParser):
    more_help: typing.Callable[[], str] | None = None  # text after the flags, built only when help is shown

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        text = super().format_help()
        return text + "\n" + self.more_help() if self.more_help is not None else text


def _methods_help() -> str:
    """Each method (from the registry) with its settings and their defaults, for --set."""
    from kdsearch.methods import METHODS, method_settings

    lines = ["methods and their settings (--method NAME, --set KEY=VALUE; defaults shown):"]
    for name, cls in METHODS.items():
        settings = ", ".join(f"{k}={v}" for k, v in method_settings(name).items()) or "no settings"
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        lines.append(f"  {name:<8} {doc.splitlines()[0] if doc else cls.__name__}")
        lines.append(f"           {settings}")
    return "\n".join(lines) + "\n"


_PATHS = ("data_dir", "cache_dir", "teacher_checkpoint")  # taken as written, never parsed as YAML


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """A flag per TrainConfig field, its help, choices and default read from the field."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or f.name == "method_args":
            continue
        flag = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        text = f.metadata.get("help", "")
        if choices:
            text += f" ({', '.join(map(str, choices))})"
        if f.default is not None and f.default is not dataclasses.MISSING and "default" not in text:
            text += f" (default {f.default})"
        if bool in typing.get_args(hints[f.name]) or hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=text)
    parser.add_argument(
        "--set",
        dest="method_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method setting, e.g. --set temperature=4 --set alpha=0.9 (repeatable)",
    )
    parser.add_argument("--config", metavar="YAML", help="read settings from a YAML file; flags override it")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def _add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per sweep option (``SweepOptions.flags``), its type, help and default read from the field."""
    from kdsearch.search.options import SweepOptions

    hints = typing.get_type_hints(SweepOptions)
    for f in SweepOptions.flags():
        flag, text = "--" + f.name.replace("_", "-"), f.metadata["help"]
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        if kind is bool:
            action = "store_true" if f.default is False else argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=f.name, action=action, default=f.default, help=text)
            continue
        if f.default is not None and "default" not in text:
            text += f" (default {f.default:g})" if isinstance(f.default, float) else f" (default {f.default})"
        metavar = f.metadata["metavar"] or f.name.upper()
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, metavar=metavar, help=text)


def parse_assignments(items: list[str], flag: str = "--set") -> dict:
    """``KEY=VALUE`` strings as a dict, each value read as YAML (numbers, lists, booleans)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}: e.g. {flag} temperature=4")
        out[key.strip()] = parse_value(value)
    return out


def _config_from_args(args: argparse.Namespace, extra: dict | None = None) -> TrainConfig:
    """The YAML file's settings as written, then the flags over them; presets apply once, at the end."""
    values = read_config_yaml(args.config) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if f.name == "method_args" or value is None:
            continue
        values[f.name] = parse_value(value) if isinstance(value, str) and f.name not in _PATHS else value
    values.update(extra or {})
    method_args = parse_assignments(args.method_args)
    if method_args or "method_args" in values:
        base = values.get("method_args") or {}
        if not isinstance(base, dict):
            raise UserError(f"{args.config}: method_args must be a mapping of the method's settings")
        values["method_args"] = {**base, **method_args}
    return TrainConfig.from_dict(values, source=args.config or "command line")


def _print_config(cfg: TrainConfig) -> int:

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _log(quiet: bool):
    return (lambda _: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    if args.print_config:
        return _print_config(cfg)
    from kdsearch.api import fit

    result = fit(cfg, log=_log(args.quiet or args.json))
    if args.save:
        try:
            result.save(args.save)
        except OSError as exc:
            raise UserError(f"cannot write {args.save} ({exc.strerror}): pass a writable --save path") from None
    if args.json:
        print(json.dumps({"config": result.config.to_dict(), "metrics": result.metrics}))
    else:
        print(format_summary(result))
        if args.save:
            print(f"student checkpoint: {args.save}")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args, extra={"teacher": args.arch} if args.arch else None)
    if args.print_config:
        return _print_config(cfg)
    from kdsearch.api import load_data
    from kdsearch.teacher.weights import get_teacher

    data = load_data(cfg)
    teacher = get_teacher(cfg, data, log=_log(args.quiet or args.json))
    if args.json:
        print(json.dumps({"path": str(teacher.path), "arch": teacher.arch, "metrics": teacher.metrics}))
    else:
        print(
            f"teacher {teacher.arch} on {cfg.dataset}: val/acc {teacher.metrics['val/acc']:.4f}  test/acc {teacher.metrics['test/acc']:.4f}"
        )
        print(f"checkpoint: {teacher.path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from kdsearch.search.options import SweepOptions
    from kdsearch.sweeper.plan import plan_sweep

    overrides = parse_assignments(args.fixed)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    flags = {f.name: getattr(args, f.name) for f in SweepOptions.flags()}
    opts = SweepOptions(**flags, overrides=overrides, verbose=0 if args.quiet else 1)
    # Planned before Ray, Tune and MLflow are imported (~2.5 s here): a mistake in the space, a
    # name taken or a sweep already running is one line at once.
    plan = plan_sweep(args.space, opts)
    from kdsearch.sweeper.run import run_planned

    summary = run_planned(plan, opts, log=_log(args.quiet))
    print(format_sweep_summary(summary))
    return 0


def _checkpoint_of(source: str, storage: str | None, tracking_uri: str | None, scratch: str, trial: str | None = None) -> Path:
    from kdsearch.search.folder import resolve_sweep

    if trial is not None:
        return resolve_sweep(source, storage, tracking_uri).trial_checkpoint(trial)
    if Path(source).is_file():
        return Path(source)
    if source.startswith("models:/"):
        from kdsearch.delivery import registry
        from kdsearch.tracking import runs as tracking

        return registry.download_registered_student(source, tracking_uri or default_tracking_uri(), Path(scratch))
    if re.fullmatch(r"[0-9a-f]{32}", source) and not Path(source).exists():
        from kdsearch.tracking import runs as tracking

        return tracking.download_best_student(source, tracking_uri or default_tracking_uri(), Path(scratch))
    return resolve_sweep(source, storage, tracking_uri).best_checkpoint()


def cmd_export(args: argparse.Namespace) -> int:

    from kdsearch.delivery.export import export_student

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _checkpoint_of(args.source, args.storage, args.tracking_uri, scratch, args.trial)
        report = export_student(checkpoint, args.format, args.out, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"exported {checkpoint} to {args.out} (verified on {report['images_note'].split(';')[0]}, "
        f"tolerance atol={report['tolerance']['atol']:g} rtol={report['tolerance']['rtol']:g}):"
    )
    for fmt, entry in report["formats"].items():
        print(
            f"  {fmt:12} {entry['file']:22} {entry['bytes'] / 1e6:8.2f} MB  max |diff| {entry['max_abs_diff']:.1e}  "
            f"acc on those {report['images']} images {entry['verify/acc']:.4f}"
        )
    print(f"  model card   model.json  (load with kdsearch.load_student({str(args.out)!r}))")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from kdsearch.delivery.predict import format_predictions, predict

    results = predict(args.model, args.images, args.top_k, args.threshold, storage=args.storage, tracking_uri=args.tracking_uri)
    if args.json:
        print(json.dumps(results))
    else:
        print(format_predictions(results, f": no attribute at {args.threshold:g} or above"))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kdsearch.search.folder import resolve_sweep
    from kdsearch.sweeper.report import build_report
    from kdsearch.tracking import runs as tracking

    folder = resolve_sweep(args.source, args.storage, args.tracking_uri)
    result = build_report(folder.path, Path(args.out) if args.out else None)
    manifest = result["manifest"]
    logged = ""
    if folder.uri is not None and not args.out:
        folder.publish(result["files"])
        logged = f" (also to {folder.uri}/report)"
    if not args.no_mlflow and manifest.get("parent_run_id"):
        tracking.log_report_to_run(manifest["parent_run_id"], args.tracking_uri or manifest["tracking_uri"], result["files"])
        logged += f" and to MLflow run {manifest['parent_run_id']}"
    print(f"report of {manifest['name']} ({len(result['table'])} trials) written to {result['out']}{logged}:")
    for path in result["files"]:
        print(f"  {path.name}")
    for note in result["notes"]:
        print(f"  note: {note}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from kdsearch.search.folder import resolve_sweep
    from kdsearch.sweeper.mirror import sync_sweep

    folder = resolve_sweep(args.source, args.storage, args.tracking_uri)
    result = sync_sweep(folder, args.tracking_uri)
    print(
        f"synced {result['trials']} trials of {folder.location} to {result['tracking_uri']} "
        f"({result['epochs_added']} epochs were missing); parent run {result['parent_run_id']}"
    )
    return 0


def cmd_ui(args: argparse.Namespace) -> int:

    from kdsearch.tracking import runs as tracking

    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):  # a server is already running: just say where
        for name, url in tracking.experiment_urls(uri, uri.rstrip("/"), args.name).items():
            print(f"{name}: {url}")
        return 0
    proc, base = tracking.start_ui_server(uri, args.port)

    def stop(signum, frame):  # the server runs in its own session: stop it on any polite signal
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        print(f"MLflow UI for {uri} at {base} (Ctrl-C stops it)")
        for name, url in tracking.experiment_urls(uri, base, args.name).items():
            print(f"  {name}: {url}", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    """How export, report and sync find a sweep given by name or MLflow run id."""
    parser.add_argument("--storage", help="where sweeps are kept (default ./sweeps)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's own, or sqlite:///$PWD/mlflow.db)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdsearch", description="Find the best way to distill a large network into a small one.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_training_commands(sub)
    _add_result_commands(sub)
    return parser


def _add_training_commands(sub) -> None:
    """train, teacher and sweep: the commands that train."""

    train = sub.add_parser("train", help="run one distillation and print accuracy and compression metrics")
    _add_config_flags(train)
    train.more_help = _methods_help
    train.add_argument("--save", metavar="PATH", help="write the student checkpoint here")
    train.add_argument("--json", action="store_true", help="print the final config and metrics as one JSON object")
    train.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    train.set_defaults(func=cmd_train)

    teacher = sub.add_parser("teacher", help="train (or find in the cache) the teacher for a dataset")
    _add_config_flags(teacher, skip=("teacher",))
    teacher.add_argument("--arch", help="teacher architecture (default: the dataset's)")
    teacher.add_argument("--json", action="store_true", help="print the checkpoint path and metrics as JSON")
    teacher.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    teacher.set_defaults(func=cmd_teacher)

    sweep = sub.add_parser("sweep", help="search distillation settings with Ray Tune + Optuna, tracked in MLflow")
    sweep.add_argument("space", help="a search space YAML file, e.g. search_spaces/quickstart.yaml")
    sweep.add_argument(
        "--set",
        dest="fixed",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a training or method setting over the file's, e.g. --set epochs=5 (repeatable; recorded for --resume)",
    )
    sweep.add_argument("--data-dir", help="folder holding the dataset files (default $KDSEARCH_DATA or ./data)")
    _add_sweep_flags(sweep)
    sweep.add_argument("--quiet", action="store_true", help="no progress output")
    sweep.set_defaults(func=cmd_sweep)


def _add_result_commands(sub) -> None:
    """export, predict, report, sync and ui: the commands that read what was trained."""
    export = sub.add_parser("export", help="export the best student of a sweep, verified, with a model card")
    export.add_argument(
        "source",
        help="a sweep folder or URI (s3://...), a sweep name, an MLflow parent run id, a student .pt checkpoint, or models:/<name>@<alias>",
    )
    export.add_argument(
        "--format",
        nargs="+",
        default=["safetensors"],
        metavar="FORMAT",
        help="one or more of safetensors, pt, torchscript, onnx (default safetensors)",
    )
    export.add_argument("--out", required=True, help="folder to write the student and model.json into")
    export.add_argument("--data-dir", help="verify on the data set there (default: the images the checkpoint carries)")
    export.add_argument("--trial", metavar="ID", help="export this trial's student instead of the best (e.g. a Pareto point)")
    _add_source_flags(export)
    export.add_argument("--json", action="store_true", help="print the verification report as JSON")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="classify image files with a student (top-k classes and probabilities)")
    predict.add_argument(
        "model", help="an export folder, a student .pt checkpoint, a sweep name or folder, or models:/<name>@<alias>"
    )
    predict.add_argument("images", nargs="+", help="image files (png, jpg, ...) or folders of them")
    predict.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    predict.add_argument("--threshold", type=float, default=0.5, help="multi-label: show attributes at or above (default 0.5)")
    predict.add_argument("--json", action="store_true", help="print every image's predictions and probabilities as JSON")
    _add_source_flags(predict)
    predict.set_defaults(func=cmd_predict)

    report = sub.add_parser("report", help="table and plots of a sweep's trials, also logged to its MLflow parent run")
    report.add_argument("source", help="a sweep folder or URI (s3://...), a sweep name or an MLflow parent run id")
    report.add_argument("--out", help="folder for the table and plots (default <sweep>/report)")
    _add_source_flags(report)
    report.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    report.set_defaults(func=cmd_report)

    sync = sub.add_parser("sync", help="push a sweep's results to MLflow after the tracking server was down")
    sync.add_argument("source", help="a sweep folder or URI (s3://...), or a sweep name")
    _add_source_flags(sync)
    sync.set_defaults(func=cmd_sync)

    ui = sub.add_parser("ui", help="open the MLflow UI on 127.0.0.1 for the sweeps' tracking store")
    ui.add_argument("--tracking-uri", help="the tracking store (default sqlite:///$PWD/mlflow.db)")
    ui.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    ui.add_argument("--name", help="print only this sweep's experiment address")
    ui.set_defaults(func=cmd_ui)


def main(argv: list[str] | None = None) -> int:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # models named module:Name import from here, as with `python -m`
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with interrupts.remembered():
            return args.func(args)
    except UserError as exc:
        print(f"kdsearch: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"kdsearch: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("kdsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

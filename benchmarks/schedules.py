"""Do schedules help, and does one sweep over methods find the best method at less cost?

    python benchmarks/schedules.py            # Fashion-MNIST, 3 search seeds: 24 minutes on 2 CPU cores beside a CI run (small: 1,500 images, 4 epochs)
    python benchmarks/schedules.py --quick    # digits, 1 seed, tiny: checks the path (CI)

(a) The best constant KD settings against the best scheduled KD settings (alpha linear from a
searched start to a searched end; temperature cosine or linear between searched ends), the
same trial budget each, TPE, every trial trained to the end.
(b) One sweep over [ce, kd, at, dkd] against three single-method sweeps (kd, at, dkd) with the
same total trials and epochs: which method each finds best, and at what cost.

Every sweep tunes on the validation split; the test split is read once, for the student each
sweep hands over (its best/metrics.json). Writes benchmarks/results/schedules.{md,json}
(--quick: to --out only). The seeds are search seeds; the training seed is the config's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kdsearch  # noqa: E402

ROOT = Path(__file__).resolve().parent
FULL = {
    "dataset": "fashion_mnist",
    "train_subset": 1500,
    "val_fraction": 0.05,  # 3,000 validation images of the 60,000: every epoch of every trial reads them
    "epochs": 4,
    "teacher": "resnet20",
    "teacher_epochs": 10,
    "student": "resnet8",
    "batch_size": 128,
    "trials": 6,
    "method_trials": 6,
}
QUICK = {
    "dataset": "digits",
    "train_subset": None,
    "epochs": 3,
    "teacher": "resnet20",
    "teacher_epochs": 5,
    "student": "resnet8",
    "batch_size": 64,
    "trials": 3,
    "method_trials": 6,
}
LR = {"loguniform": [2e-2, 3e-1]}


def fixed(s: dict, cache: str) -> dict:
    out = {k: s[k] for k in ("dataset", "epochs", "teacher", "teacher_epochs", "student", "batch_size") if k in s}
    if s.get("val_fraction"):
        out["val_fraction"] = s["val_fraction"]
    out["cache_dir"] = cache
    if s["train_subset"]:
        out["train_subset"] = s["train_subset"]
    return out


def search(trials: int, seed: int) -> dict:
    return {
        "num_samples": trials,
        "sampler": "tpe",
        "n_startup_trials": max(1, min(4, trials - 1)),
        "scheduler": "fifo",
        "seed": seed,
    }


def kd_spaces(s: dict, cache: str, seed: int) -> dict[str, dict]:
    constant = {"temperature": {"loguniform": [1, 16]}, "alpha": {"uniform": [0, 1]}, "lr": LR}
    scheduled = {
        "alpha": {"schedule": "linear", "start": {"uniform": [0.5, 1.0]}, "end": {"uniform": [0.0, 0.5]}},
        "temperature": {
            "schedule": {"choice": ["cosine", "linear"]},
            "start": {"loguniform": [2, 16]},
            "end": {"uniform": [1, 4]},
        },
        "lr": LR,
    }
    base = {**fixed(s, cache), "method": "kd"}
    return {
        "kd constant": {"fixed": base, "space": constant, "search": search(s["trials"], seed)},
        "kd scheduled": {"fixed": base, "space": scheduled, "search": search(s["trials"], seed)},
    }


SETTINGS = {
    "kd": {"temperature": {"loguniform": [1, 16]}, "alpha": {"uniform": [0, 1]}},
    "at": {"beta": {"loguniform": [1e1, 1e4]}, "alpha": {"uniform": [0, 0.9]}},
    "dkd": {"beta": {"uniform": [1, 10]}, "temperature": {"loguniform": [1, 8]}},
}


def method_spaces(s: dict, cache: str, seed: int) -> dict[str, dict]:
    total = s["method_trials"]
    out = {
        "one sweep over ce, kd, at, dkd": {
            "fixed": fixed(s, cache),
            "space": {"method": {"choice": ["ce", "kd", "at", "dkd"]}, **SETTINGS, "lr": LR},
            "search": search(total, seed),
        }
    }
    for method, settings in SETTINGS.items():  # the same total trials, split over three sweeps
        out[f"{method} alone"] = {
            "fixed": {**fixed(s, cache), "method": method},
            "space": {**settings, "lr": LR},
            "search": search(total // len(SETTINGS), seed),
        }
    return out


def run(name: str, space: dict, work: Path) -> dict:
    started = time.perf_counter()
    summary = kdsearch.sweep(
        dict(space, name=name), storage=str(work / "sweeps"), tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
        verbose=0, register=False, log=lambda _: None,
    )  # fmt: skip
    table = summary.table
    metric = f"best {summary.objectives[0][0]}"
    methods = table["method"].tolist() if "method" in table else [space["fixed"]["method"]] * len(table)
    return {
        "sweep": name,
        "best_val": float(table[metric].max()),
        "test_acc": float(summary.best_metrics["test/acc"]),
        "best_method": summary.best_config["method"],
        "best_settings": {k: v for k, v in summary.best_params.items()},
        "epochs": int(table["epochs run"].sum()),
        "trials_by_method": {m: methods.count(m) for m in sorted(set(methods))},
        "seconds": time.perf_counter() - started,
    }


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{100 * mean:.2f} +/- {100 * statistics.pstdev(values):.2f}" if len(values) > 1 else f"{100 * mean:.2f}"


def write(out: Path, s: dict, seeds: list[int], part_a: list[dict], part_b: list[dict], quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "schedules.json").write_text(
        json.dumps({"settings": s, "seeds": seeds, "kd": part_a, "methods": part_b}, indent=2) + "\n"
    )
    lines = [
        "# Schedules and method comparison (benchmarks/schedules.py" + (" --quick)" if quick else ")"),
        "",
        f"{s['dataset']}, {s['teacher']} -> {s['student']}, {s['epochs']} epochs a trial"
        + (f", {s['train_subset']} training images" if s["train_subset"] else "")
        + f"; search seeds {', '.join(map(str, seeds))} (mean +/- std over seeds, in %). Tuned on validation; test read once per sweep.",
        "",
        f"## (a) Constant against scheduled KD, {s['trials']} TPE trials each",
        "",
        "| search | best val/acc | its student's test/acc | epochs |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("kd constant", "kd scheduled"):
        rows = [r for r in part_a if r["sweep"].startswith(name)]
        lines.append(
            f"| {name} | {spread([r['best_val'] for r in rows])} | {spread([r['test_acc'] for r in rows])} | {rows[0]['epochs']} |"
        )
    constant = statistics.mean(r["test_acc"] for r in part_a if r["sweep"].startswith("kd constant"))
    scheduled = statistics.mean(r["test_acc"] for r in part_a if r["sweep"].startswith("kd scheduled"))
    spread_a = (
        max(
            statistics.pstdev([r["test_acc"] for r in part_a if r["sweep"].startswith(n)] or [0])
            for n in ("kd constant", "kd scheduled")
        )
        if len(seeds) > 1
        else 0.0
    )
    if len(seeds) < 2:
        verdict = "one search seed: no verdict (the spread over seeds is unknown)"
    elif scheduled - constant > spread_a:
        verdict = "schedules help here"
    else:
        verdict = "schedules do not help here" + (" beyond the spread over seeds" if scheduled > constant else "")
    lines += [
        "",
        f"{verdict[0].upper() + verdict[1:]}: test/acc {100 * scheduled:.2f}% scheduled against {100 * constant:.2f}% constant "
        f"(mean over seeds; the larger spread over seeds is {100 * spread_a:.2f} points).",
        "",
    ]
    lines += [
        f"## (b) One sweep over methods against one sweep per method, {s['method_trials']} trials in all each way",
        "",
        "| seed | one sweep: best method | its test/acc | trials per method | single sweeps: best method | its test/acc | epochs each way |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed in seeds:
        multi = next(r for r in part_b if r["seed"] == seed and r["sweep"].startswith("one sweep"))
        singles = [r for r in part_b if r["seed"] == seed and r["sweep"].endswith(" alone")]
        best_single = max(singles, key=lambda r: r["best_val"])
        counts = ", ".join(f"{m} {n}" for m, n in multi["trials_by_method"].items())
        lines.append(
            f"| {seed} | {multi['best_method']} | {100 * multi['test_acc']:.2f} | {counts} | {best_single['best_method']} "
            f"| {100 * best_single['test_acc']:.2f} | {multi['epochs']} / {sum(r['epochs'] for r in singles)} |"
        )
    multi_acc = [r["test_acc"] for r in part_b if r["sweep"].startswith("one sweep")]
    lines += ["", f"The one sweep's student: test/acc {spread(multi_acc)}%.", ""]
    (out / "schedules.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, one seed, tiny sweeps: checks the path")
    parser.add_argument("--seeds", type=int, nargs="+", help="search seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results; --quick needs it)")
    parser.add_argument("--work", type=Path, help="where sweeps, MLflow and the teacher cache go (default: a temporary folder)")
    args = parser.parse_args()
    if args.quick and args.out is None:
        parser.error("--quick writes only to --out DIR (the committed results come from a full run)")
    s = QUICK if args.quick else FULL
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        cache = str(work / "cache")
        part_a, part_b = [], []
        for seed in seeds:
            for name, space in kd_spaces(s, cache, seed).items():
                part_a.append({**run(f"{name.replace(' ', '-')}-{seed}", space, work), "seed": seed})
                print(f"(a) seed {seed} {name}: {part_a[-1]}", flush=True)
            for name, space in method_spaces(s, cache, seed).items():
                label = name.replace(" ", "-").replace(",", "")
                part_b.append({**run(f"{label}-{seed}", space, work), "sweep": name, "seed": seed})
                print(f"(b) seed {seed} {name}: {part_b[-1]}", flush=True)
        for r in part_a:
            r["sweep"] = r["sweep"].rsplit("-", 1)[0].replace("-", " ")
        write(args.out or ROOT / "results", s, seeds, part_a, part_b, args.quick)


if __name__ == "__main__":
    main()

"""Search efficiency: TPE + ASHA against random search and a grid, at the same epoch budget.

    python benchmarks/search_efficiency.py            # Fashion-MNIST, KD resnet20 -> resnet8 (~15 min on 2 CPUs)
    python benchmarks/search_efficiency.py --quick    # digits, a minute: checks the path (CI)

Each strategy searches the same three KD settings (lr, temperature, alpha) for the same
student and teacher on the same training subset, selecting on validation accuracy:

- grid: 3 x 3 x 3 choices, every combination trained for the full epochs (FIFO);
- random: random draws from the ranges that span the grid, full epochs, until the grid's
  epoch budget is spent;
- TPE + ASHA: Optuna's TPE proposes, ASHA stops poor trials early, until the same budget.

It records, for every strategy, the best validation accuracy seen so far against the epochs
consumed so far (every reported epoch of every trial, in the order they finished), and
writes benchmarks/results/search-efficiency[-quick]/{results.md, curves.csv, curves.png}.
The goal (issue "Benchmark suite"): TPE + ASHA within 0.3 points of the grid's best using at
most a third of the grid's epochs. The teacher is the one `reproduce.py fashion-cpu` trains
(same cache folder), so running that first saves its training here.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from kdsearch import TrainConfig
from kdsearch.data import load_dataset
from kdsearch.sweeper import SweepOptions, run_sweep
from kdsearch.teachers import get_teacher
from kdsearch.sweep_folder import load_trials

ROOT = Path(__file__).resolve().parent

SETTINGS = {
    "full": dict(dataset="fashion_mnist", teacher="resnet20", student="resnet8", teacher_epochs=20, epochs=5, train_subset=5000,
                 grid={"lr": [0.02, 0.06, 0.2], "temperature": [1.5, 4.0, 12.0], "alpha": [0.2, 0.5, 0.9]}, tpe_samples=60),
    "quick": dict(dataset="digits", teacher="resnet20", student="resnet8", teacher_epochs=30, epochs=3, train_subset=None,
                  grid={"lr": [0.01, 0.1], "temperature": [2.0, 8.0]}, tpe_samples=6),
}  # fmt: skip
WITHIN = 0.003  # "within 0.3 points of the grid's best"


def spaces(s: dict, teacher_path: Path, cache: str) -> dict[str, dict]:
    fixed = {
        "method": "kd",
        "dataset": s["dataset"],
        "teacher": s["teacher"],
        "student": s["student"],
        "epochs": s["epochs"],
        "teacher_epochs": s["teacher_epochs"],
        "teacher_checkpoint": str(teacher_path),
        "cache_dir": cache,
        "batch_size": 128,
    }
    if s["train_subset"]:
        fixed["train_subset"] = s["train_subset"]
    grid = s["grid"]
    ranges = {k: {"loguniform" if k in ("lr", "temperature") else "uniform": [min(v), max(v)]} for k, v in grid.items()}
    size = math.prod(len(v) for v in grid.values())
    return {
        "grid": {"fixed": fixed, "space": {k: {"choice": v} for k, v in grid.items()}, "search": {"sampler": "grid", "scheduler": "fifo"}},
        "random": {"fixed": fixed, "space": ranges, "search": {"sampler": "random", "scheduler": "fifo", "num_samples": size, "seed": 0}},
        "tpe+asha": {"fixed": fixed, "space": ranges, "search": {"sampler": "tpe", "scheduler": "asha", "num_samples": s["tpe_samples"],
                     "grace_period": 1, "reduction_factor": 3, "n_startup_trials": max(2, s["tpe_samples"] // 6), "seed": 0}},
    }  # fmt: skip


def curve(sweep_dir: Path, metric: str = "val/acc") -> pd.DataFrame:
    """Best validation accuracy so far against epochs consumed so far, over every trial's epochs."""
    rows = []
    for t in load_trials(sweep_dir):
        for h in t.history:
            if isinstance(h.get(metric), (int, float)) and not h.get("trial/diverged"):
                rows.append((float(h.get("timestamp", 0)), float(h.get("time_total_s", 0)), h[metric]))
    rows.sort()
    best, out = -math.inf, []
    for i, (_, _, value) in enumerate(rows, start=1):
        best = max(best, value)
        out.append({"epochs": i, "best_val_acc": best})
    return pd.DataFrame(out)


def epochs_to_reach(c: pd.DataFrame, target: float) -> int | None:
    hit = c[c["best_val_acc"] >= target]
    return int(hit["epochs"].iloc[0]) if len(hit) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits and a 2 x 2 grid: a minute, checks the path")
    parser.add_argument("--out", help="results folder (default benchmarks/results/search-efficiency[-quick])")
    parser.add_argument(
        "--work", default="sweeps-reproduce", help="sweeps, MLflow store and the teacher cache (shared with reproduce.py)"
    )
    args = parser.parse_args()
    s = SETTINGS["quick" if args.quick else "full"]
    out = Path(args.out) if args.out else ROOT / "results" / ("search-efficiency-quick" if args.quick else "search-efficiency")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = str(work / "cache")

    # The teacher trained on the full training split (the one reproduce.py's preset trains).
    data = load_dataset(s["dataset"])
    teacher_cfg = TrainConfig(
        method="kd",
        dataset=s["dataset"],
        teacher=s["teacher"],
        student=s["student"],
        teacher_epochs=s["teacher_epochs"],
        cache_dir=cache,
    )
    teacher = get_teacher(teacher_cfg, data, log=print)

    stamp = int(time.time())
    curves, rows = {}, []
    for strategy, space in spaces(s, teacher.path, cache).items():
        path = work / f"search-efficiency-{strategy}.yaml"
        path.write_text(yaml.safe_dump({"name": f"efficiency-{strategy.replace('+', '-')}", **space}, sort_keys=False))
        started = time.perf_counter()
        opts = SweepOptions(
            storage=str(work / "sweeps"),
            tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
            name=f"efficiency-{strategy.replace('+', '-')}-{stamp}",
            verbose=0,
            register=False,
        )
        summary = run_sweep(path, opts, log=print)
        seconds = time.perf_counter() - started
        curves[strategy] = curve(Path(summary.sweep_dir))
        c = curves[strategy]
        rows.append(
            {
                "strategy": strategy,
                "trials": len(summary.table),
                "epochs used": int(c["epochs"].iloc[-1]),
                "best val/acc": float(c["best_val_acc"].iloc[-1]),
                "wall s": seconds,
                "best settings": summary.best_params,
            }
        )
        print(
            f"{strategy}: {rows[-1]['trials']} trials, {rows[-1]['epochs used']} epochs, best val/acc {rows[-1]['best val/acc']:.4f}",
            flush=True,
        )

    grid_epochs = rows[0]["epochs used"]
    target = rows[0]["best val/acc"] - WITHIN
    for r in rows:
        c = curves[r["strategy"]]
        reach = epochs_to_reach(c, target)
        r["epochs to reach grid best - 0.3"] = reach
        r["fraction of grid epochs"] = reach / grid_epochs if reach is not None else None
        at_third = c[c["epochs"] <= grid_epochs // 3]["best_val_acc"]
        r["best val/acc at 1/3 of grid epochs"] = float(at_third.iloc[-1]) if len(at_third) else float("nan")
    write(out, rows, curves, s, args)


def write(out: Path, rows: list[dict], curves: dict, s: dict, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    long = pd.concat([c.assign(strategy=k) for k, c in curves.items()], ignore_index=True)
    long.to_csv(out / "curves.csv", index=False)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, c in curves.items():
        ax.step(c["epochs"], 100 * c["best_val_acc"], where="post", label=k)
    grid_best = 100 * rows[0]["best val/acc"]
    ax.axhline(grid_best - 100 * WITHIN, color="grey", ls=":", label="grid best - 0.3")
    ax.axvline(rows[0]["epochs used"] / 3, color="grey", ls="--", label="1/3 of grid epochs")
    ax.set_xlabel("epochs consumed (all trials)")
    ax.set_ylabel("best validation accuracy so far (%)")
    lows = [100 * c["best_val_acc"].iloc[min(len(c) - 1, 2)] for c in curves.values()]
    ax.set_ylim(max(min(lows) - 1, 0), grid_best + 1)
    ax.legend()
    ax.set_title(f"KD {s['teacher']} -> {s['student']} on {s['dataset']}: search efficiency")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)

    tpe = next(r for r in rows if r["strategy"] == "tpe+asha")
    ok = tpe["fraction of grid epochs"] is not None and tpe["fraction of grid epochs"] <= 1 / 3
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    )
    grid = " x ".join(f"{k} {v}" for k, v in s["grid"].items())
    lines = [
        f"# Search efficiency: KD {s['teacher']} -> {s['student']} on {s['dataset']}",
        "",
        f"Machine: {machine}. Command: `python benchmarks/search_efficiency.py {' '.join(sys.argv[1:])}`.",
        f"Grid: {grid}; {s['epochs']} epochs per trial; training subset {s['train_subset'] or 'all'}; selection on validation accuracy.",
        "",
        "| strategy | trials | epochs used | best val acc | best val acc at 1/3 of grid epochs | epochs to reach grid best - 0.3 | share of grid epochs | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        reach = "never" if r["epochs to reach grid best - 0.3"] is None else str(r["epochs to reach grid best - 0.3"])
        share = "-" if r["fraction of grid epochs"] is None else f"{r['fraction of grid epochs']:.2f}"
        lines.append(
            f"| {r['strategy']} | {r['trials']} | {r['epochs used']} | {100 * r['best val/acc']:.2f}% "
            f"| {100 * r['best val/acc at 1/3 of grid epochs']:.2f}% | {reach} | {share} | {r['wall s']:.0f} |"
        )
    lines += [
        "",
        f"Goal: TPE + ASHA within 0.3 points of the grid's best using <= 1/3 of the grid's epochs: **{'holds' if ok else 'MISSED'}**.",
        "",
        "![best so far](curves.png)",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

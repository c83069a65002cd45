"""Search efficiency: TPE + ASHA against random search and a grid, at the same epoch budget,
over several search seeds.

    python benchmarks/search_efficiency.py            # Fashion-MNIST, KD resnet20 -> resnet8, 3 seeds (~70 min on 2 CPUs)
    python benchmarks/search_efficiency.py --reuse-only --noise 5   # + the grid's best retrained with 5 seeds
    python benchmarks/search_efficiency.py --reuse-only --retrain-picks 3   # + every run's pick retrained with 3 fresh seeds
    python benchmarks/search_efficiency.py --quick    # digits, a minute: checks the path (CI)

Each strategy searches the same three KD settings (lr, temperature, alpha) for the same
student and teacher on the same training subset, selecting on validation accuracy:

- grid: 3 x 3 x 3 choices, every combination trained for the full epochs (FIFO);
- random: random draws from the ranges that span the grid, full epochs, until the grid's
  epoch budget is spent;
- TPE + ASHA as the shipped spaces search: Optuna's TPE proposes after 4 random trials, ASHA
  stops the weaker two thirds at its one rung, at 80% of the epochs, until the same budget;

- candidates: other settings of TPE + ASHA (see CANDIDATES), each measured the same way.

A search's best trial is partly its settings and partly its training seed's luck, and the more
trials a search sees the luckier its best: --retrain-picks K trains the settings each run would
hand over (at 1/3 of the grid's epochs and at its budget) again with K fresh training seeds and
scores them on the test split, read once for each (the validation split chose them, so it would
flatter them): what the search found (picks.csv). A goal between strategies holds only when the
95% interval of the difference leaves 0 out (benchmarks/stats.py; search seeds are not paired).

It also tells what an ASHA rung after each epoch would know (rungs.csv): over the trials of grid
and random search, which train every epoch, how well the accuracy after that epoch ranks them by
their last one.

It records, for every strategy and search seed, the best validation accuracy seen so far
against the epochs consumed so far (every reported epoch of every trial, in the order they
finished), and writes benchmarks/results/search-efficiency[-quick]/{results.md, runs.csv,
curves.csv, curves.png}: mean +/- std over the seeds. The grid has no search seed (the same 27
trials, each with the same training seed), so it runs once. Goals (issue 17), on the seeds'
mean: TPE + ASHA within 0.3 points of the grid's best using at most a third of the grid's
epochs, and at the grid's full budget at least random search's best. Results are rewritten
after every sweep, so a stopped run leaves what it measured. The teacher (a resnet20, 8
epochs on the whole training split, ~7 minutes here) is trained once and cached in --work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from stats import difference

from kdsearch import TrainConfig
from kdsearch.data import load_dataset
from kdsearch.search.folder import SweepFolder, load_trials
from kdsearch.search.space import SearchSettings
from kdsearch.sweeper.run import SweepOptions, run_sweep
from kdsearch.teacher.weights import get_teacher

ROOT = Path(__file__).resolve().parent

SETTINGS = {
    "full": dict(dataset="fashion_mnist", teacher="resnet20", student="resnet8", teacher_epochs=8, epochs=5, train_subset=5000,
                 grid={"lr": [0.02, 0.06, 0.2], "temperature": [1.5, 4.0, 12.0], "alpha": [0.2, 0.5, 0.9]}),
    "quick": dict(dataset="digits", teacher="resnet20", student="resnet8", teacher_epochs=30, epochs=3, train_subset=None,
                  grid={"lr": [0.01, 0.1], "temperature": [2.0, 8.0]}),
}  # fmt: skip
WITHIN = 0.003  # "within 0.3 points of the grid's best"
BASE = "tpe+asha"  # the search the shipped spaces use: TPE after 4 random trials, ASHA's one rung at 80% of the epochs
# Other settings, measured the same way; each names its trials per grid trial, so that its
# epochs come to about the grid's budget.
CANDIDATES = {
    # As shipped before 2026-11-26 (session 8): TPE after 10 random trials, ASHA's rungs after 1 and 3 of 5 epochs
    "tpe10+asha-g1": {"n_startup_trials": 10, "grace_period": 1, "reduction_factor": 3, "per_grid_trial": 60 / 27},
    # TPE after 4 random trials, every trial trains all its epochs
    # (grace_period means nothing under fifo; 1 is what its sweeps were written with)
    "tpe4": {"n_startup_trials": 4, "scheduler": "fifo", "grace_period": 1, "per_grid_trial": 1.0},
}
# The same search under an earlier name (its finished sweeps are reused under the current one).
ALIASES = {BASE: ["tpe4+asha-g4"]}
# How the searcher learnt from trials ASHA stopped: 1 (no -rN in the name) as complete, with the
# accuracy they stopped at; 2 as pruned, ranked on the epoch before they stopped; 3 as pruned, on
# the epoch they stopped at. --reuse takes a searched strategy's sweeps of the current revision
# only, but for a strategy ASHA does not stop (fifo) those of revision 2 as well: no difference.
REVISION = 3


def stems(strategy: str, space: dict, seed: int) -> list[str]:
    """The names this strategy's and seed's sweeps have, the one a new sweep takes first."""
    out = []
    for name in [strategy, *ALIASES.get(strategy, [])]:
        base = f"efficiency-{name.replace('+', '-')}"
        if strategy in ("grid", "random"):
            out.append(f"{base}-s{seed}")
            continue
        revisions = [REVISION] + ([2] if space["search"]["scheduler"] == "fifo" else [])
        out += [f"{base}-r{r}-s{seed}" for r in revisions]
    return out


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
    tpe = {  # as the shipped spaces search: the rung where their default puts it, written out
        "sampler": "tpe",
        "scheduler": "asha",
        "num_samples": max(2, round(size * 1.15)),
        "grace_period": SearchSettings().first_rung(s["epochs"]),
        "reduction_factor": 3,
        "n_startup_trials": 4,
    }
    out = {
        "grid": {"fixed": fixed, "space": {k: {"choice": v} for k, v in grid.items()}, "search": {"sampler": "grid", "scheduler": "fifo"}},
        "random": {"fixed": fixed, "space": ranges, "search": {"sampler": "random", "scheduler": "fifo", "num_samples": size}},
        BASE: {"fixed": fixed, "space": ranges, "search": tpe},
    }  # fmt: skip
    for name, changes in CANDIDATES.items():
        changes = dict(changes)
        changes["num_samples"] = max(2, round(size * changes.pop("per_grid_trial")))
        out[name] = {"fixed": fixed, "space": ranges, "search": {**tpe, **changes}}
    return out


def curve(sweep_dir: Path, metric: str = "val/acc") -> pd.DataFrame:
    """Best validation accuracy so far against epochs consumed so far, over every trial's epochs,
    with the settings of the trial that holds it (what the search would hand over at that point)."""
    rows = []
    for t in load_trials(sweep_dir):
        for h in t.history:
            if isinstance(h.get(metric), (int, float)) and not h.get("trial/diverged"):
                rows.append((float(h.get("timestamp", 0)), float(h.get("time_total_s", 0)), h[metric], json.dumps(t.params)))
    rows.sort()
    best, settings, out = -math.inf, None, []
    for i, (_, _, value, params) in enumerate(rows, start=1):
        if value > best:
            best, settings = value, params
        out.append({"epochs": i, "best_val_acc": best, "best_settings": settings})
    return pd.DataFrame(out)


def best_at(c: pd.DataFrame, epochs: int) -> float:
    seen = c[c["epochs"] <= epochs]["best_val_acc"]
    return float(seen.iloc[-1]) if len(seen) else float("nan")


def pick_at(c: pd.DataFrame, epochs: int) -> dict:
    """The settings a search would hand over after ``epochs``: its best trial's so far."""
    seen = c[c["epochs"] <= epochs]["best_settings"]
    return json.loads(seen.iloc[-1]) if len(seen) else {}


def epochs_to_reach(c: pd.DataFrame, target: float) -> int | None:
    hit = c[c["best_val_acc"] >= target]
    return int(hit["epochs"].iloc[0]) if len(hit) else None


def mean_curve(curves: list[pd.DataFrame], budget: int) -> pd.DataFrame:
    """Mean and std over seeds of best-so-far at every epoch count up to ``budget`` (a search
    that stopped earlier keeps its last best)."""
    epochs = np.arange(1, budget + 1)
    values = np.array([[best_at(c, e) for e in epochs] for c in curves])
    return pd.DataFrame({"epochs": epochs, "mean": np.nanmean(values, 0), "std": np.nanstd(values, 0), "seeds": len(curves)})


def finished_run(work: Path, stem: str, space: dict) -> dict | None:
    """The latest finished sweep in ``work`` of this strategy and seed with exactly this space
    (--reuse: an interrupted benchmark goes on where it stopped, new seeds join earlier ones)."""
    for path in sorted(work.glob(f"{stem}-*.yaml"), reverse=True):
        written = yaml.safe_load(path.read_text())
        sweep_dir = work / "sweeps" / written.pop("name")
        if written != space or not (sweep_dir / "best" / "student.pt").is_file():
            continue
        c = curve(sweep_dir)
        config = (SweepFolder(sweep_dir).read_best() or ({}, {}))[0]
        best = {**config, **(config.get("method_args") or {})}
        wall_file = sweep_dir / "efficiency-wall-s.txt"
        return {
            "trials": len(load_trials(sweep_dir)),
            "epochs used": int(c["epochs"].iloc[-1]),
            "best val/acc": float(c["best_val_acc"].iloc[-1]),
            "wall s": float(wall_file.read_text()) if wall_file.is_file() else float("nan"),
            "best settings": json.dumps({k: best[k] for k in space["space"] if k in best}),
            "curve": c,
            "sweep": sweep_dir.name,
        }
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits and a 2 x 2 grid, one seed: a minute, checks the path")
    parser.add_argument("--seeds", type=int, nargs="+", help="search seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--strategies", nargs="+", help=f"which to run (default all: grid random {BASE} {' '.join(CANDIDATES)})")
    parser.add_argument("--out", help="results folder (default benchmarks/results/search-efficiency[-quick])")
    parser.add_argument(
        "--work", default="sweeps-reproduce", help="sweeps, MLflow store and the teacher cache (shared with reproduce.py)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="take a strategy and seed from a finished sweep in --work with the same space"
    )
    parser.add_argument("--reuse-only", action="store_true", help="rebuild the results from finished sweeps in --work; run none")
    parser.add_argument(
        "--noise", type=int, default=0, metavar="N", help="also train the grid's best settings with training seeds 0..N-1"
    )
    parser.add_argument(
        "--retrain-picks",
        type=int,
        default=0,
        metavar="K",
        help="also train the settings every run picked (at 1/3 of the grid's epochs and at its budget) with fresh training seeds 1..K",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        metavar="N",
        help="also simulate TPE + ASHA and random search with N trials at once (e.g. 2 8 32) on a surrogate fitted to "
        "the grid's and random search's trials (search_concurrency.py); writes concurrency.{md,csv}",
    )
    parser.add_argument(
        "--sim-seeds", type=int, default=10, metavar="K", help="search seeds per simulated strategy and concurrency (default 10)"
    )
    args = parser.parse_args()
    s = SETTINGS["quick" if args.quick else "full"]
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
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
    all_spaces = spaces(s, teacher.path, cache)
    chosen = args.strategies or list(all_spaces)
    unknown = [k for k in chosen if k not in all_spaces]
    if unknown:
        parser.error(f"unknown strategy {unknown[0]!r}: choose from {', '.join(all_spaces)}")
    runs: list[dict] = []
    for seed in seeds:  # seed by seed, so that a stopped run has every strategy's first seeds
        for strategy in chosen:
            if strategy == "grid" and seed != seeds[0]:
                continue  # no search seed: the same trials every time
            space = json.loads(json.dumps(all_spaces[strategy]))
            if strategy != "grid":
                space["search"]["seed"] = seed
            names = stems(strategy, space, seed)
            stem = names[0]
            earlier = None
            for name in names if args.reuse or args.reuse_only else []:
                earlier = earlier or finished_run(work, name, space)
            if earlier is None and args.reuse_only:
                print(f"{strategy} seed {seed}: no finished sweep in {work}, skipped (--reuse-only)", flush=True)
                continue
            if earlier is not None:
                print(f"{strategy} seed {seed}: reusing {earlier['sweep']}", flush=True)
                runs.append({"strategy": strategy, "seed": seed, **earlier})
            else:
                name = f"{stem}-{stamp}"
                path = work / f"{name}.yaml"
                path.write_text(yaml.safe_dump({"name": name, **space}, sort_keys=False))
                started = time.perf_counter()
                opts = SweepOptions(
                    storage=str(work / "sweeps"), tracking_uri=f"sqlite:///{work / 'mlflow.db'}", verbose=0, register=False
                )
                summary = run_sweep(path, opts, log=print)
                c = curve(Path(summary.sweep_dir))
                wall = time.perf_counter() - started
                (Path(summary.sweep_dir) / "efficiency-wall-s.txt").write_text(f"{wall:.1f}\n")
                runs.append(
                    {
                        "strategy": strategy,
                        "seed": seed,
                        "trials": len(summary.table),
                        "epochs used": int(c["epochs"].iloc[-1]),
                        "best val/acc": float(c["best_val_acc"].iloc[-1]),
                        "wall s": wall,
                        "best settings": json.dumps(summary.best_params),
                        "curve": c,
                        "sweep": name,
                    }
                )
            print(
                f"{strategy} seed {seed}: {runs[-1]['trials']} trials, {runs[-1]['epochs used']} epochs, "
                f"best val/acc {runs[-1]['best val/acc']:.4f}",
                flush=True,
            )
            if any(r["strategy"] == "grid" for r in runs):
                write(out, runs, s, args, work)
    if args.noise and any(r["strategy"] == "grid" for r in runs):
        grid = next(r for r in runs if r["strategy"] == "grid")
        args.noise_runs = seed_noise(all_spaces["grid"]["fixed"], json.loads(grid["best settings"]), args.noise, work)
        write(out, runs, s, args, work)
    if args.retrain_picks and any(r["strategy"] == "grid" for r in runs):
        args.picks = retrain_picks(runs, all_spaces["grid"]["fixed"], args.retrain_picks, work)
        write(out, runs, s, args, work)
    if args.concurrency and any(r["strategy"] == "grid" for r in runs):
        simulate_concurrency(runs, all_spaces, s, args, work, out)


def simulate_concurrency(runs: list[dict], all_spaces: dict, s: dict, args, work: Path, out: Path) -> None:
    """The concurrency axis (issue 31): TPE + ASHA and random search at N trials at once, simulated
    on a surrogate of the real grid and random trials (search_concurrency.py)."""
    import search_concurrency

    design = []
    for r in runs:
        if r["strategy"] in ("grid", "random"):
            for t in load_trials(work / "sweeps" / r["sweep"]):
                accs = [h["val/acc"] for h in t.history if isinstance(h.get("val/acc"), (int, float))]
                if len(accs) == s["epochs"] and not any(h.get("trial/diverged") for h in t.history):
                    design.append(({k: t.params[k] for k in s["grid"]}, accs))
    budget = next(r for r in runs if r["strategy"] == "grid")["epochs used"]
    size = math.prod(len(v) for v in s["grid"].values())
    table, quality = search_concurrency.run(
        design,
        {BASE: all_spaces[BASE], "random": all_spaces["random"]},
        budget,
        args.concurrency,
        list(range(args.sim_seeds)),
        {BASE: all_spaces[BASE]["search"]["num_samples"] / size, "random": 1.0},
        size,
    )
    search_concurrency.write(
        out, table, quality, budget, args.concurrency, BASE, f"python benchmarks/search_efficiency.py {' '.join(sys.argv[1:])}"
    )


def train_again(fixed: dict, settings: dict, seed: int, path: Path) -> dict:
    """``settings`` trained with training seed ``seed`` by `kdsearch train`, as a user would (one
    thread: two run side by side on 2 cores); its JSON is kept at ``path`` and reused."""
    import subprocess

    from kdsearch.config import TrainConfig

    if not path.is_file() or not path.read_text().strip():
        fields = TrainConfig.__dataclass_fields__
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in fixed.items() if k in fields]
        flags += [f"--{k.replace('_', '-')}={v}" if k in fields else f"--set={k}={v}" for k, v in settings.items()]
        cmd = [sys.executable, "-m", "kdsearch", "train", *flags, f"--seed={seed}", "--threads=1", "--json"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return json.loads(path.read_text())["metrics"]


def seed_noise(fixed: dict, best: dict, seeds: int, work: Path) -> list[dict]:
    """The grid's best settings trained again with other training seeds: how much of a sweep's
    best is those settings and how much the seed. Each run is kept in <work>/noise/ and reused."""
    runs = []
    for seed in range(seeds):
        metrics = train_again(fixed, best, seed, work / "noise" / f"seed{seed}.json")
        runs.append({"seed": seed, "val/acc": metrics["val/acc"], "test/acc": metrics.get("test/acc")})
        print(f"grid's best settings, training seed {seed}: val/acc {metrics['val/acc']:.4f}", flush=True)
    return runs


def retrain_picks(runs: list[dict], fixed: dict, seeds: int, work: Path) -> list[dict]:
    """What each search really found, free of the luck of one training seed: the settings every
    run would hand over at 1/3 of the grid's epochs and at its budget, trained again with fresh
    training seeds 1..``seeds`` (the sweeps' trials used seed 0, whose draw made them the pick).
    Runs two at a time; each kept in <work>/picks/ and reused."""
    from concurrent.futures import ThreadPoolExecutor

    budget = next(r for r in runs if r["strategy"] == "grid")["epochs used"]
    picks = []
    for r in runs:
        for when, epochs in (("1/3", budget // 3), ("full", budget)):
            settings = pick_at(r["curve"], epochs)
            key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
            picks.append({"strategy": r["strategy"], "search seed": r["seed"], "budget": when, "settings": settings, "key": key})
    jobs = {(p["key"], seed): p["settings"] for p in picks for seed in range(1, seeds + 1)}
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        done = dict(
            zip(
                jobs,
                pool.map(lambda job: train_again(fixed, jobs[job], job[1], work / "picks" / job[0] / f"seed{job[1]}.json"), jobs),
            )
        )
    for p in picks:
        tests = [done[(p["key"], seed)]["test/acc"] for seed in range(1, seeds + 1)]
        vals = [done[(p["key"], seed)]["val/acc"] for seed in range(1, seeds + 1)]
        p.update({"retrained test/acc": float(np.mean(tests)), "retrained test std": float(np.std(tests))})
        p.update({"retrained val/acc": float(np.mean(vals)), "training seeds": seeds})
        p["settings"] = json.dumps(p["settings"])
        print(
            f"{p['strategy']} seed {p['search seed']} at {p['budget']}: {p['settings']} retrained test/acc "
            f"{p['retrained test/acc']:.4f}",
            flush=True,
        )
    return picks


def summarise(runs: list[dict]) -> tuple[list[dict], dict[str, pd.DataFrame], int, float]:
    grid = next(r for r in runs if r["strategy"] == "grid")
    budget, target = grid["epochs used"], grid["best val/acc"] - WITHIN
    for r in runs:
        c = r["curve"]
        r["best at 1/3 of grid epochs"] = best_at(c, budget // 3)
        r["best at grid budget"] = best_at(c, budget)
        r["epochs to reach grid best - 0.3"] = epochs_to_reach(c, target)
    rows, curves = [], {}
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == strategy]
        reached = [r["epochs to reach grid best - 0.3"] for r in mine if r["epochs to reach grid best - 0.3"] is not None]
        curves[strategy] = mean_curve([r["curve"] for r in mine], budget)
        rows.append(
            {
                "strategy": strategy,
                "seeds": len(mine),
                "trials": float(np.mean([r["trials"] for r in mine])),
                "epochs used": float(np.mean([r["epochs used"] for r in mine])),
                "best at grid budget": float(np.mean([r["best at grid budget"] for r in mine])),
                "best at grid budget std": float(np.std([r["best at grid budget"] for r in mine])),
                "best at 1/3": float(np.mean([r["best at 1/3 of grid epochs"] for r in mine])),
                "best at 1/3 std": float(np.std([r["best at 1/3 of grid epochs"] for r in mine])),
                "reached": f"{len(reached)}/{len(mine)}",
                "mean epochs to reach": float(np.mean(reached)) if reached else None,
                "wall s": float(np.mean([r["wall s"] for r in mine])),
            }
        )
    return rows, curves, budget, target


def rung_quality(runs: list[dict], work: Path) -> pd.DataFrame:
    """What an ASHA rung after each epoch would know: over every trial that trained all its epochs
    (grid and random search stop none), the rank correlation of the validation accuracy after
    that epoch with the last one, and how many of the best tenth (by the last accuracy) a rung
    that keeps the top third (reduction factor 3) would have kept."""
    rows = []
    for r in runs:
        if r["strategy"] in ("grid", "random"):
            for t in load_trials(work / "sweeps" / r["sweep"]):
                accs = [h["val/acc"] for h in t.history if isinstance(h.get("val/acc"), (int, float))]
                rows.append(accs)
    full = max((len(a) for a in rows), default=0)
    table = pd.DataFrame([a for a in rows if len(a) == full])
    out = []
    if len(table) < 10:
        return pd.DataFrame(out)
    best = table[full - 1] >= table[full - 1].quantile(0.9)
    for epoch in range(full - 1):
        kept = table[epoch] >= table[epoch].quantile(2 / 3)
        out.append(
            {
                "epoch": epoch + 1,
                "trials": len(table),
                "rank correlation with the last epoch": table[epoch].corr(table[full - 1], method="spearman"),
                "best tenth kept by a top-third rung": f"{int((kept & best).sum())}/{int(best.sum())}",
            }
        )
    return pd.DataFrame(out)


def _grid_best(runs: list[dict]) -> str:
    best = json.loads(next(r for r in runs if r["strategy"] == "grid")["best settings"])
    return ", ".join(f"{k} {v}" for k, v in best.items())


def write(out: Path, runs: list[dict], s: dict, args, work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows, curves, budget, target = summarise(runs)
    pd.concat([c.assign(strategy=k) for k, c in curves.items()], ignore_index=True).to_csv(out / "curves.csv", index=False)
    pd.DataFrame([{k: v for k, v in r.items() if k != "curve"} for r in runs]).to_csv(out / "runs.csv", index=False)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, c in curves.items():
        line = ax.step(c["epochs"], 100 * c["mean"], where="post", label=f"{k} ({int(c['seeds'].iloc[0])} seeds)")
        ax.fill_between(
            c["epochs"],
            100 * (c["mean"] - c["std"]),
            100 * (c["mean"] + c["std"]),
            step="post",
            alpha=0.15,
            color=line[0].get_color(),
        )
    ax.axhline(100 * target, color="grey", ls=":", label="grid best - 0.3")
    ax.axvline(budget / 3, color="grey", ls="--", label="1/3 of grid epochs")
    ax.set_xlabel("epochs consumed (all trials)")
    ax.set_ylabel("best validation accuracy so far (%), mean +/- std")
    lows = [100 * c["mean"].iloc[min(len(c) - 1, 2)] for c in curves.values()]
    ax.set_ylim(max(min(lows) - 1, 0), 100 * (target + WITHIN) + 1)
    ax.legend(fontsize=8)
    ax.set_title(f"KD {s['teacher']} -> {s['student']} on {s['dataset']}: search efficiency")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    )
    grid = " x ".join(f"{k} {v}" for k, v in s["grid"].items())
    lines = [
        f"# Search efficiency: KD {s['teacher']} -> {s['student']} on {s['dataset']}",
        "",
        f"Machine: {machine}. Command: `python benchmarks/search_efficiency.py {' '.join(sys.argv[1:])}`.",
        f"Grid: {grid}; {s['epochs']} epochs per trial; training subset {s['train_subset'] or 'all'}; selection on validation "
        f"accuracy. Grid budget {budget} epochs; target (grid best - 0.3 points) {100 * target:.2f}%. "
        f"Mean +/- std over search seeds (the grid has none: one run).",
        "",
        "| strategy | seeds | trials | epochs used | best at 1/3 of grid epochs | best at grid budget | reached target | mean epochs to reach | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        reach = (
            "-"
            if r["mean epochs to reach"] is None
            else f"{r['mean epochs to reach']:.0f} ({r['mean epochs to reach'] / budget:.2f} of grid)"
        )
        lines.append(
            f"| {r['strategy']} | {r['seeds']} | {r['trials']:.0f} | {r['epochs used']:.0f} "
            f"| {100 * r['best at 1/3']:.2f} +/- {100 * r['best at 1/3 std']:.2f}% "
            f"| {100 * r['best at grid budget']:.2f} +/- {100 * r['best at grid budget std']:.2f}% | {r['reached']} | {reach} "
            f"| {r['wall s']:.0f} |"
        )
    by = {r["strategy"]: r for r in rows}
    lines += ["", "Goals, on the seeds' mean:"]
    for name in [k for k in (BASE, *CANDIDATES) if k in by]:
        fast = by[name]["best at 1/3"] >= target
        lines.append(
            f"- {name} within 0.3 points of the grid's best at 1/3 of the grid's epochs: **{'holds' if fast else 'MISSED'}** "
            f"({100 * by[name]['best at 1/3']:.2f}% vs target {100 * target:.2f}%)"
        )
        if "random" in by:
            seen = {k: [r["best at grid budget"] for r in runs if r["strategy"] == k] for k in (name, "random")}
            d = difference(seen[name], seen["random"], paired=False)
            lines.append(
                f"- {name} at the grid's budget at least random search's best: **{d.verdict('no worse')}** "
                f"({100 * by[name]['best at grid budget']:.2f}% vs {100 * by['random']['best at grid budget']:.2f}%; "
                f"difference {d.format(100)}; better beyond noise: {d.verdict('higher')})"
            )
    noise = getattr(args, "noise_runs", None)
    if noise:
        pd.DataFrame(noise).to_csv(out / "noise.csv", index=False)
        vals = [100 * n["val/acc"] for n in noise]
        lines += [
            "",
            f"The grid's best settings ({_grid_best(runs)}) trained again with training seeds "
            f"0-{len(noise) - 1} (`noise.csv`; seed 0 is the grid's own trial): validation accuracy "
            f"{', '.join(f'{v:.2f}' for v in vals)}%, mean {np.mean(vals):.2f} +/- {np.std(vals):.2f}%; "
            f"{sum(v >= 100 * target for v in vals)} of {len(vals)} reach the target {100 * target:.2f}%.",
        ]
    picks = getattr(args, "picks", None)
    if picks:
        frame = pd.DataFrame(picks)
        frame.to_csv(out / "picks.csv", index=False)
        k = int(frame["training seeds"].iloc[0])
        lines += [
            "",
            f"What each search found, free of one training seed's luck (`picks.csv`): the settings each run would hand over, "
            f"trained again with fresh training seeds 1-{k} (the sweeps' trials used seed 0) and tested once on the test "
            "split (the validation split chose them), mean over those seeds, then mean +/- std over search seeds:",
            "",
            "| strategy | seeds | its pick at 1/3 of grid epochs, test acc | its pick at grid budget, test acc |",
            "| --- | --- | --- | --- |",
        ]
        for strategy in dict.fromkeys(frame["strategy"]):
            mine = frame[frame["strategy"] == strategy]
            cells = []
            for when in ("1/3", "full"):
                v = 100 * mine[mine["budget"] == when]["retrained test/acc"]
                cells.append(f"{v.mean():.2f} +/- {v.std(ddof=0):.2f}%")
            lines.append(f"| {strategy} | {mine['search seed'].nunique()} | {cells[0]} | {cells[1]} |")

        def retrained(strategy: str, when: str) -> list[float]:
            return list(frame[(frame["strategy"] == strategy) & (frame["budget"] == when)]["retrained test/acc"])

        lines += [
            "",
            "The same goals on what the searches found (their picks retrained and tested; the difference of the means over "
            "search seeds with its 95% interval, in points):",
        ]
        for name in [k for k in (BASE, *CANDIDATES) if k in set(frame["strategy"])]:
            fast, grid_pick = retrained(name, "1/3"), retrained("grid", "full")
            d = difference([v + WITHIN for v in fast], grid_pick, paired=False)
            lines.append(
                f"- {name}'s pick at 1/3 of the grid's epochs within 0.3 points of the grid's pick: **{d.verdict('no worse')}** "
                f"({100 * np.mean(fast):.2f}% vs {100 * np.mean(grid_pick):.2f}%; difference + 0.3 points {d.format(100)})"
            )
            if "random" in set(frame["strategy"]):
                full, rand = retrained(name, "full"), retrained("random", "full")
                d = difference(full, rand, paired=False)
                lines.append(
                    f"- {name}'s pick at the grid's budget at least random search's: **{d.verdict('no worse')}** "
                    f"({100 * np.mean(full):.2f}% vs {100 * np.mean(rand):.2f}%; difference {d.format(100)}; better beyond "
                    f"noise: {d.verdict('higher')})"
                )
    quality = rung_quality(runs, work)
    if len(quality):
        quality.to_csv(out / "rungs.csv", index=False)
        lines += [
            "",
            f"What an ASHA rung after each epoch knows (`rungs.csv`; the {quality['trials'].iloc[0]} trials of grid and random "
            "search, which train every epoch):",
            "",
            "| epoch | rank correlation with the last epoch's accuracy | best tenth kept by a rung keeping the top third |",
            "| --- | --- | --- |",
        ]
        for _, q in quality.iterrows():
            lines.append(
                f"| {q['epoch']} | {q['rank correlation with the last epoch']:.2f} | {q['best tenth kept by a top-third rung']} |"
            )
    lines += ["", "Every run: `runs.csv`. ![best so far](curves.png)"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

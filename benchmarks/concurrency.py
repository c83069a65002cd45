"""Many trials asked at once: does kdsearch's searcher still spread and converge?

    python benchmarks/concurrency.py         # about a minute; writes benchmarks/results/concurrency.{md,json}

A toy objective (no training): 2 settings in [0, 1], score 1 - (x - 0.7)^2 - (y - 0.2)^2,
48 trials released in waves of 1, 2, 16 and 32 asked before any of the wave is told (what a
cluster running that many trials at once does to the searcher), TPE with and without the
constant liar, and random search, 10 seeds. Reported: how many settings of the first wave asked
after TPE's 8 random startup trials are distinct and how far apart they are, how close the
trials after the startup land to the optimum (their median regret), and the best score after
48 trials, each as mean and spread over seeds; a difference between two arms is judged on its
95% interval, paired by search seed (benchmarks/stats.py). (With 32 at once the first wave is
all startup draws: the first modelled wave is the last 16.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stats import difference  # noqa: E402

from kdsearch.ray_trials.searcher import StudySearcher  # noqa: E402
from kdsearch.search import study as studies  # noqa: E402

SPACE = {"x": {"kind": "uniform", "args": [0.0, 1.0]}, "y": {"kind": "uniform", "args": [0.0, 1.0]}}
STARTUP, TOTAL = 8, 48


def score(config: dict) -> float:
    return 1 - (config["x"] - 0.7) ** 2 - (config["y"] - 0.2) ** 2


def spread(configs: list[dict]) -> float:
    """Mean distance of a wave's settings from their centroid: how far apart they were sent."""
    cx = statistics.mean(c["x"] for c in configs)
    cy = statistics.mean(c["y"] for c in configs)
    return statistics.mean(((c["x"] - cx) ** 2 + (c["y"] - cy) ** 2) ** 0.5 for c in configs)


def run(at_once: int, seed: int, arm: str) -> dict:
    """One search of TOTAL trials asked ``at_once`` at a time; ``arm``: "liar" (kdsearch's TPE),
    "no liar" (the same TPE without the constant liar, as Optuna's TPE was before it) or "random"."""
    sampler = "random" if arm == "random" else "tpe"
    searcher = StudySearcher(SPACE, [("val/acc", "max")], sampler=sampler, seed=seed, startup_trials=STARTUP, max_epochs=1)
    if arm == "no liar":
        searcher.study.sampler = studies.optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP, constant_liar=False)
    best, distinct, wide, size, n, modelled = -1.0, None, 0.0, 0, 0, []
    while n < TOTAL:
        wave = [(f"t{n + i}", searcher.suggest(f"t{n + i}")) for i in range(min(at_once, TOTAL - n))]
        if distinct is None and n + len(wave) > STARTUP and n >= STARTUP:
            distinct = len({(round(c["x"], 6), round(c["y"], 6)) for _, c in wave})
            wide = spread([c for _, c in wave]) if len(wave) > 1 else 0.0
            size = len(wave)
        for trial_id, config in wave:
            best = max(best, score(config))
            if n >= STARTUP:
                modelled.append(1 - score(config))
            searcher.on_trial_complete(trial_id, result={"val/acc": score(config), "training_iteration": 1})
        n += len(wave)
    return {"best": best, "distinct": distinct, "spread": wide, "size": size, "median_regret": statistics.median(modelled)}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.pstdev(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    rows = []
    for arm in ("liar", "no liar", "random"):
        for at_once in (1, 2, 16, 32):
            runs = [run(at_once, seed, arm) for seed in range(args.seeds)]
            row = {"arm": arm, "at_once": at_once, "seeds": args.seeds, "wave_size": runs[0]["size"], "runs": runs}
            row["first_modelled_wave_distinct"] = min(r["distinct"] for r in runs)
            for key in ("spread", "median_regret", "best"):
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in runs])
            rows.append(row)
            print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concurrency.json").write_text(json.dumps({"trials": TOTAL, "startup": STARTUP, "rows": rows}, indent=1) + "\n")
    (args.out / "concurrency.md").write_text(render(rows, args.seeds))


def render(rows: list[dict], seeds: int) -> str:
    lines = [
        "# Many trials asked at once (benchmarks/concurrency.py)",
        "",
        f"Toy objective, {TOTAL} trials, TPE after {STARTUP} random ones (random search: all random), {seeds} seeds.",
        "'distinct' is the fewest distinct settings in the first wave TPE models, over the seeds; 'spread' the mean",
        "distance of that wave's settings from their centroid; 'median regret' that of the trials after the first",
        f"{STARTUP}; 'best' the best score after {TOTAL}; each mean +/- std over the seeds.",
        "",
        "| arm | at once | distinct in first modelled wave | its spread | median regret after the startup | best after 48 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['at_once']} | {r['first_modelled_wave_distinct']} of {r['wave_size']} "
            f"| {r['spread_mean']:.3f} +/- {r['spread_std']:.3f} | {r['median_regret_mean']:.4f} +/- {r['median_regret_std']:.4f} "
            f"| {r['best_mean']:.5f} +/- {r['best_std']:.5f} |"
        )
    by = {(r["arm"], r["at_once"]): r for r in rows}
    lines += [
        "",
        "At 16 at once, each difference with its 95% interval over the search seeds (paired by seed; benchmarks/stats.py):",
        "",
    ]
    for a, b in (("liar", "no liar"), ("liar", "random")):
        ra, rb = by[(a, 16)], by[(b, 16)]
        for what, key, up, down in (
            ("the first modelled wave's spread", "spread", "wider", "narrower"),
            ("median regret after the startup", "median_regret", "higher", "lower"),
            ("best after 48", "best", "higher", "lower"),
        ):
            d = difference([r[key] for r in ra["runs"]], [r[key] for r in rb["runs"]])
            said = {"holds": up, "MISSED": down}.get(d.verdict("higher"), "within noise")
            lines.append(
                f"- {a} against {b}, {what}: {ra[f'{key}_mean']:.4f} against {rb[f'{key}_mean']:.4f}, "
                f"difference {d.format(digits=4)}: {said}"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

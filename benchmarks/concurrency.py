"""Many trials asked at once: does kdsearch's searcher still spread and converge?

    python benchmarks/concurrency.py         # about a minute; writes benchmarks/results/concurrency.{md,json}

A toy objective (no training): 2 settings in [0, 1], score 1 - (x - 0.7)^2 - (y - 0.2)^2,
48 trials released in waves of 1, 2, 16 and 32 asked before any of the wave is told (what a
cluster running that many trials at once does to the searcher), TPE with and without the
constant liar, 10 seeds. Reported: how many settings of the first wave asked after TPE's 8
random startup trials are distinct and how far apart they are, and the best score after 48
trials, mean and spread over seeds. (With 32 at once the first wave is all startup draws:
the first modelled wave is the last 16.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdsearch.ray_trials.searcher import StudySearcher  # noqa: E402
from kdsearch.ray_trials import study as studies  # noqa: E402

SPACE = {"x": {"kind": "uniform", "args": [0.0, 1.0]}, "y": {"kind": "uniform", "args": [0.0, 1.0]}}
STARTUP, TOTAL = 8, 48


def score(config: dict) -> float:
    return 1 - (config["x"] - 0.7) ** 2 - (config["y"] - 0.2) ** 2


def spread(configs: list[dict]) -> float:
    """Mean distance of a wave's settings from their centroid: how far apart they were sent."""
    cx = statistics.mean(c["x"] for c in configs)
    cy = statistics.mean(c["y"] for c in configs)
    return statistics.mean(((c["x"] - cx) ** 2 + (c["y"] - cy) ** 2) ** 0.5 for c in configs)


def run(at_once: int, seed: int, liar: bool) -> tuple[float, int, float, int]:
    searcher = StudySearcher(SPACE, [("val/acc", "max")], sampler="tpe", seed=seed, startup_trials=STARTUP, max_epochs=1)
    if not liar:  # the same TPE without the constant liar, as Optuna's TPE was before it
        searcher.study.sampler = studies.optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP, constant_liar=False)
    best, distinct, wide, size, n = -1.0, None, 0.0, 0, 0
    while n < TOTAL:
        wave = [(f"t{n + i}", searcher.suggest(f"t{n + i}")) for i in range(min(at_once, TOTAL - n))]
        if distinct is None and n + len(wave) > STARTUP and n >= STARTUP:
            distinct = len({(round(c["x"], 6), round(c["y"], 6)) for _, c in wave})
            wide = spread([c for _, c in wave]) if len(wave) > 1 else 0.0
            size = len(wave)
        for trial_id, config in wave:
            best = max(best, score(config))
            searcher.on_trial_complete(trial_id, result={"val/acc": score(config), "training_iteration": 1})
        n += len(wave)
    return best, distinct, wide, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    rows = []
    for liar in (True, False):
        for at_once in (1, 2, 16, 32):
            runs = [run(at_once, seed, liar) for seed in range(args.seeds)]
            bests = [b for b, _, _, _ in runs]
            rows.append(
                {
                    "constant_liar": liar,
                    "at_once": at_once,
                    "first_modelled_wave_distinct": min(d for _, d, _, _ in runs),
                    "first_modelled_wave_spread": statistics.mean(w for _, _, w, _ in runs),
                    "wave_size": runs[0][3],
                    "best_mean": statistics.mean(bests),
                    "best_std": statistics.pstdev(bests),
                    "regret_mean": 1 - statistics.mean(bests),
                    "seeds": args.seeds,
                }
            )
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concurrency.json").write_text(json.dumps({"trials": TOTAL, "startup": STARTUP, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Many trials asked at once (benchmarks/concurrency.py)",
        "",
        f"Toy objective, {TOTAL} trials, TPE after {STARTUP} random ones, {args.seeds} seeds. 'distinct' is the",
        "fewest distinct settings in the first wave TPE models, over the seeds; 'spread' the mean distance of that",
        "wave's settings from their centroid (mean over seeds); regret is 1 minus the best score.",
        "",
        "| constant liar | at once | distinct in first modelled wave | its spread | best after 48 (mean +/- std) | regret |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {'yes' if r['constant_liar'] else 'no'} | {r['at_once']} | {r['first_modelled_wave_distinct']} of {r['wave_size']} "
            f"| {r['first_modelled_wave_spread']:.3f} | {r['best_mean']:.5f} +/- {r['best_std']:.5f} | {r['regret_mean']:.5f} |"
        )
    (args.out / "concurrency.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

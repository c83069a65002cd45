"""Sweeps of many one-epoch trials: is the cost per trial flat from 100 to 2,000 trials?

    python benchmarks/many_trials.py                       # 100, 500 and 2,000 trials: about 25 minutes on 2 CPU cores
    python benchmarks/many_trials.py --trials 20 40        # a quick look

Each count is `speed.measure_many(N)`: a real `kdsearch sweep` of N one-epoch digits trials (KD
resnet20 -> resnet8, random sampler, FIFO), 2 at a time, in its own process. Overhead per trial =
(trial phase - sum of trial times / 2) / N. Goals (issue 31): <= 0.2 s at every count; the largest
count's overhead within 1.2x of the smallest's; the driver's peak memory flat; every trial in
MLflow exactly once; the report built in <= 10 s. Writes benchmarks/results/many-trials.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import measure_many  # noqa: E402

ROOT = Path(__file__).resolve().parent


def judge(ok: bool) -> str:
    return "holds" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdsearch-many-") as cache:
        measure_many(4, cache)  # the teacher is trained and cached once, outside the measured sweeps
        for n in args.trials:
            row = measure_many(n, cache)
            rows.append(row)
            print(json.dumps(row), flush=True)
    first, last = rows[0], rows[-1]
    growth = last["overhead_per_trial_s"] / first["overhead_per_trial_s"]
    memory = [r["driver_peak_rss_mb"] for r in rows]
    goals = [
        ("overhead per trial <= 0.2 s at every count", all(r["overhead_per_trial_s"] <= 0.2 for r in rows)),
        (f"{last['trials']} trials' overhead within 1.2x of {first['trials']} trials' ({growth:.2f}x)", growth <= 1.2),
        (f"driver peak memory flat ({min(memory):,.0f}-{max(memory):,.0f} MB; within 10%)", max(memory) <= 1.1 * min(memory)),
        (
            "every trial in MLflow exactly once",
            all(r["mlflow_trial_runs"] == r["mlflow_distinct_trials"] == r["trials"] for r in rows),
        ),
        (f"report of {last['trials']} trials <= 10 s ({last['report_s']:.1f} s)", last["report_s"] <= 10),
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "many-trials.json").write_text(json.dumps({"machine": machine, "rows": rows, "goals": dict(goals)}, indent=2) + "\n")
    lines = [
        "# Sweeps of many one-epoch trials (benchmarks/many_trials.py)",
        "",
        f"Machine: {machine}. Each row: a `kdsearch sweep` of N one-epoch digits trials, 2 at a time. "
        "Overhead per trial = (trial phase - sum of trial times / 2) / N.",
        "",
        "| trials | overhead per trial | trial phase s | sum of trial times s | wall s | driver peak MB "
        "| MLflow live s | MLflow at end s | report s | MLflow trial runs (distinct) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {r['trials']} | {r['overhead_per_trial_s']:.3f} s | {r['trials_phase_s']:.1f} | {r['sum_trial_s']:.1f} "
            f"| {r['wall_s']:.0f} | {r['driver_peak_rss_mb']:,.0f} | {r['mlflow_live_s']:.1f} | {r['mlflow_end_s']:.1f} "
            f"| {r['report_s']:.1f} | {r['mlflow_trial_runs']} ({r['mlflow_distinct_trials']}) |"
            for r in rows
        ],
        "",
        "Goals:",
        *[f"- {text}: **{judge(ok)}**" for text, ok in goals],
    ]
    (out / "many-trials.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

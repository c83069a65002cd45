"""Sweeps of many one-epoch trials: is the cost per trial flat from 100 to 2,000 trials, and what
does kdsearch add per trial to what a plain Ray Tune script costs?

    python benchmarks/many_trials.py                           # 100, 500 and 2,000 trials, 2 repeats: about an hour on 2 CPU cores
    python benchmarks/many_trials.py --trials 20 40 --repeats 1  # a quick look

Each count runs, --repeats times and in alternating order, two arms in their own processes:
`speed.measure_many(N)`, a real `kdsearch sweep` of N one-epoch digits trials (KD resnet20 ->
resnet8, random sampler, FIFO), and `plain_tune.py N`, the same trials as a hand-written Ray
Tune script would run them; both 2 at a time. Beyond the training steps, per trial = (trial phase -
sum of the trials' training steps / 2) / N: everything a trial costs but its steps (building its
models, validation, reporting, the search, logging, checkpoints), the same measure on both arms
(Tune's own trial timer starts at different points for a function and a class trainable, and
here the plain trials run their teacher live, kdsearch's look it up). An absolute figure moves
from machine to machine, so the goals are ratios from the same sitting, each over the repeats
(mean and range): kdsearch's cost beyond the steps against plain Tune's; the largest count's
within 1.2x of the smallest's; the driver's peak memory flat; every trial in MLflow exactly
once; the report built in <= 10 s.
Writes benchmarks/results/many-trials.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import measure_many  # noqa: E402

ROOT = Path(__file__).resolve().parent


def judge(ok: bool) -> str:
    return "holds" if ok else "MISSED"


def measure_plain(trials: int, cache: str, concurrency: int = 2) -> dict:
    """plain_tune.py's sweep of ``trials`` in its own process, with its driver's peak memory."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "plain_tune.py"), str(trials), cache], stdout=out, stderr=err, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if status != 0:
            raise SystemExit(f"the plain Tune sweep of {trials} failed: {err.read().decode()[-2000:]}")
        row = json.loads(out.read().decode().strip().splitlines()[-1])
    row.update(wall_s=wall, driver_peak_rss_mb=usage.ru_maxrss / 1024)
    row["overhead_per_trial_s"] = (row["trials_phase_s"] - row["sum_trial_s"] / concurrency) / trials
    return row


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """mean (min-max) of repeated values."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm at each count, in alternating order")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kdsearch-many-") as cache:
        measure_many(4, cache)  # the teacher is trained and cached once, outside the measured sweeps
        for n in args.trials:
            for repeat in range(args.repeats):
                arms = ("kdsearch", "plain") if repeat % 2 == 0 else ("plain", "kdsearch")
                for arm in arms:
                    row = measure_many(n, cache) if arm == "kdsearch" else measure_plain(n, cache)
                    row["beyond_steps_per_trial_s"] = (row["trials_phase_s"] - row["sum_train_steps_s"] / 2) / n
                    runs.append({"arm": arm, "repeat": repeat, **row})
                    print(json.dumps(runs[-1]), flush=True)
    write(runs, args)


def write(runs: list[dict], args) -> None:
    def of(arm: str, n: int, key: str) -> list[float]:
        return [r[key] for r in sorted(runs, key=lambda r: r["repeat"]) if r["arm"] == arm and r["trials"] == n]

    counts = list(dict.fromkeys(r["trials"] for r in runs))
    key = "beyond_steps_per_trial_s"
    ratio = {n: [k / p for k, p in zip(of("kdsearch", n, key), of("plain", n, key))] for n in counts}
    first, last = counts[0], counts[-1]
    growth = [b / a for a, b in zip(of("kdsearch", first, key), of("kdsearch", last, key))]
    memory = [statistics.fmean(of("kdsearch", n, "driver_peak_rss_mb")) for n in counts]
    kd_runs = [r for r in runs if r["arm"] == "kdsearch"]
    goals = [
        (
            "kdsearch's cost per trial beyond the training steps against plain Tune's, at every count (mean over repeats: "
            + ", ".join(f"{statistics.fmean(ratio[n]):.2f}x at {n}" for n in counts)
            + "; within 1.5x)",
            all(max(ratio[n]) <= 1.5 for n in counts),
        ),
        (
            f"kdsearch at {last} trials: cost beyond the steps within 1.2x of {first} trials' (each repeat: "
            + ", ".join(f"{g:.2f}x" for g in growth)
            + ")",
            all(g <= 1.2 for g in growth),
        ),
        (f"driver peak memory flat ({min(memory):,.0f}-{max(memory):,.0f} MB; within 10%)", max(memory) <= 1.1 * min(memory)),
        (
            "every trial in MLflow exactly once",
            all(r["mlflow_trial_runs"] == r["mlflow_distinct_trials"] == r["trials"] for r in kd_runs),
        ),
        (
            f"report of {last} trials <= 10 s ({max(of('kdsearch', last, 'report_s')):.1f} s at most)",
            max(of("kdsearch", last, "report_s")) <= 10,
        ),
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "repeats": args.repeats, "runs": runs, "goals": dict(goals)}
    (out / "many-trials.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Sweeps of many one-epoch trials, beside a plain Ray Tune script (benchmarks/many_trials.py)",
        "",
        f"Machine: {machine}. Each count: a `kdsearch sweep` of N one-epoch digits trials and `plain_tune.py` (the same "
        f"trials as a hand-written Ray Tune script, no MLflow, Optuna or checkpoints), 2 at a time, {args.repeats} "
        "repeats each in alternating order. Beyond the steps = (trial phase - sum of the trials' training steps / 2) / N, "
        "the same measure on both arms; overhead = (trial phase - sum of Tune's trial times / 2) / N, as Tune times a "
        "trial (a class trainable's setup is outside its timer, a function trainable's inside). Each cell: mean over the "
        "repeats (min-max).",
        "",
        "| trials | kdsearch beyond the steps per trial s | plain Tune beyond the steps per trial s | kdsearch / plain Tune "
        "| kdsearch overhead per trial s | plain Tune overhead per trial s | kdsearch trial phase s | plain Tune trial phase s "
        "| kdsearch driver peak MB | plain Tune driver peak MB | MLflow live s | report s | MLflow trial runs (distinct) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in counts:
        logged = ", ".join(f"{r['mlflow_trial_runs']} ({r['mlflow_distinct_trials']})" for r in kd_runs if r["trials"] == n)
        cells = [
            spread(of("kdsearch", n, key)),
            spread(of("plain", n, key)),
            spread(ratio[n], "{:.2f}x"),
            spread(of("kdsearch", n, "overhead_per_trial_s")),
            spread(of("plain", n, "overhead_per_trial_s")),
            spread(of("kdsearch", n, "trials_phase_s"), "{:.1f}"),
            spread(of("plain", n, "trials_phase_s"), "{:.1f}"),
            spread(of("kdsearch", n, "driver_peak_rss_mb"), "{:,.0f}"),
            spread(of("plain", n, "driver_peak_rss_mb"), "{:,.0f}"),
            spread(of("kdsearch", n, "mlflow_live_s"), "{:.1f}"),
            spread(of("kdsearch", n, "report_s"), "{:.1f}"),
            logged,
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Goals:", *[f"- {text}: **{judge(ok)}**" for text, ok in goals]]
    (out / "many-trials.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

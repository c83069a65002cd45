"""Sweeps of many trials, A/B: the same `speed.measure_many` sweep run by two commits of kdsearch,
interleaved, in one sitting.

    python benchmarks/many_trials_ab.py --revs 5374373 HEAD --trials 100 500 --repeats 2 --name many-trials-gc
    python benchmarks/many_trials_ab.py --revs HEAD HEAD --trials 4 --repeats 1 --warm-up 2 --out DIR   # CI: checks the path

Each commit's `kdsearch` and `benchmarks` are taken with `git archive` into a temporary folder and
run from there (`python -m kdsearch sweep` of N one-epoch digits trials, 2 at a time). The order
of the two alternates from one repeat to the next, and a short sweep runs first and is dropped
(on this machine the first sweep after a quiet spell ran up to 2x slower, whichever commit it was).
Writes <out>/<name>.{json,md} (default benchmarks/results/many-trials-ab): every run of each commit and trial count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent


def checkout(rev: str, into: Path, slot: int) -> tuple[str, Path]:
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True, text=True)
    sha = sha.stdout.strip()
    folder = into / f"{slot}-{sha}"  # the same commit twice (HEAD HEAD): two folders
    folder.mkdir()
    archive = subprocess.run(["git", "archive", sha, "kdsearch", "benchmarks"], cwd=REPO, check=True, capture_output=True)
    subprocess.run(["tar", "x", "-C", str(folder)], input=archive.stdout, check=True)
    return sha, folder


def measure(folder: Path, trials: int, cache: str) -> dict:
    """measure_many of this commit, in a process that imports only this commit's code."""
    code = (
        "import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/benchmarks']; import speed; "
        "print(json.dumps(speed.measure_many(int(sys.argv[2]), sys.argv[3])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(trials), cache],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--revs", nargs=2, required=True, metavar=("BEFORE", "AFTER"), help="two git revisions")
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warm-up", type=int, default=20, help="trials of the sweep run first and dropped")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    parser.add_argument("--name", default="many-trials-ab", help="<out>/<name>.json and .md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "cache")
        code = [checkout(rev, Path(tmp), slot) for slot, rev in enumerate(args.revs)]
        measure(code[0][1], args.warm_up, cache)  # warm-up (and the teacher into the cache), dropped
        runs = []
        for trials in args.trials:
            for repeat in range(args.repeats):
                for slot in (0, 1) if repeat % 2 == 0 else (1, 0):
                    sha, folder = code[slot]
                    r = measure(folder, trials, cache)
                    runs.append({"code": sha, "slot": slot, "repeat": repeat, **r})
                    print(
                        f"{sha} {trials} trials: overhead {r['overhead_per_trial_s']:.3f} s a trial, "
                        f"trial phase {r['trials_phase_s']:.1f} s",
                        flush=True,
                    )
                    write(args, code, runs)


def write(args, code, runs: list[dict]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(runs, indent=1) + "\n")
    shas = [sha for sha, _ in code]
    lines = [
        f"# Sweeps of many trials: {shas[0]} against {shas[1]}",
        "",
        f"Machine: {platform.machine()}, 2 CPUs. Command: `python benchmarks/many_trials_ab.py {' '.join(sys.argv[1:])}`.",
        "Each run: `speed.measure_many(N)`, a `kdsearch sweep` of N one-epoch digits trials (KD resnet20 -> resnet8, random",
        "sampler, FIFO), 2 at a time. Overhead per trial = (trial phase - sum of trial times / 2) / N. Goal (issue 17): <= 0.2 s.",
        "",
        "| code | trials | runs | trial phase s | sum of trial times s | overhead per trial | wall s | driver peak MB | MLflow live s | report s | MLflow trial runs (distinct) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for trials in dict.fromkeys(r["trials"] for r in runs):
        for slot, sha in enumerate(shas):
            mine = [r for r in runs if r["slot"] == slot and r["trials"] == trials]
            if not mine:
                continue

            def each(key, fmt):
                return ", ".join(format(r[key], fmt) for r in mine)

            lines.append(
                f"| {sha} | {trials} | {len(mine)} | {each('trials_phase_s', '.1f')} | {each('sum_trial_s', '.1f')} "
                f"| {each('overhead_per_trial_s', '.3f')} s | {each('wall_s', '.0f')} | {each('driver_peak_rss_mb', ',.0f')} "
                f"| {each('mlflow_live_s', '.1f')} | {each('report_s', '.1f')} "
                f"| {', '.join(str(r['mlflow_trial_runs']) + ' (' + str(r['mlflow_distinct_trials']) + ')' for r in mine)} |"
            )
    lines += ["", f"{shas[1]} against {shas[0]}, overhead per trial, each repeat's pair (the order alternates):", ""]
    for trials in dict.fromkeys(r["trials"] for r in runs):
        pairs = {}
        for r in runs:
            if r["trials"] == trials:
                pairs.setdefault(r["repeat"], {})[r["slot"]] = r["overhead_per_trial_s"]
        ratios = [p[1] / p[0] for p in pairs.values() if len(p) == 2]
        if ratios:
            lines.append(
                f"- {trials} trials: {', '.join(f'{x:.2f}x' for x in ratios)} (mean {sum(ratios) / len(ratios):.2f}x, "
                f"{min(ratios):.2f}x-{max(ratios):.2f}x over {len(ratios)} repeats)"
            )
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""How fast kdsearch trains students, and what a sweep costs on top: ratios from one run.

    python benchmarks/speed.py            # Fashion-MNIST subset, resnet56 teacher -> resnet8 student
    python benchmarks/speed.py --quick    # digits, a few seconds a measurement (what CI runs)

Measures, on whatever device is there (the CPU here):
  - student training throughput (images/s, training steps only) for the CE-only student,
    KD with the live teacher, KD with the cached teacher, and the same CE run inside a Ray
    Tune trial and in a plain Ray task (each beside a bare run, --repeats rounds, medians),
    and the CPU the rest of the machine uses while each of those three trains (by process);
  - the data pipeline: torchvision DataLoader + PIL transforms against kdsearch's in-memory
    batched pipeline, producing augmented, normalised batches;
  - sweep start-up: from `kdsearch sweep` starting to the first trial result (median of 3;
    a fresh MLflow database each time, the worst case).
Writes benchmarks/results/speed-<device>[-quick].{md,json} with the goals and whether they hold.
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
import threading
import time
from pathlib import Path

import torch

from kdsearch import TrainConfig, fit
from kdsearch.data import load_dataset
from kdsearch.data.pipeline import DeviceData
from kdsearch.models import build_model
from kdsearch.runtime.device import resolve_device, set_threads
from kdsearch.teacher.outputs import compute_teacher_outputs
from kdsearch.teacher.weights import Teacher

ROOT = Path(__file__).resolve().parent


def throughput(history: list[dict], n: int, skip: int = 1) -> float:
    """Images per second over the training steps of the epochs after the first (warm-up)."""
    epochs = history[skip:] or history
    return n * len(epochs) / sum(h["time/epoch_train_s"] for h in epochs)


def untrained_teacher(arch: str, data, width: float = 1.0) -> Teacher:
    # Speed does not depend on the weights: an untrained teacher costs the same forward pass.
    from kdsearch.models.checkpoint import model_spec

    model = build_model(arch, data.num_outputs, data.in_channels, "cifar", width)
    return Teacher(model, arch, {}, None, model_spec(arch, data.num_outputs, data.in_channels, "cifar", width))


def measure_training(base: dict, data, teacher_arch: str, threads: int) -> tuple[dict, Teacher, object]:
    """KD with the live teacher and the teacher cache's build; the teacher and the cache are
    handed back for the rounds, which measure the bare CE run and KD with the cache."""
    n = len(data.train_x)
    teacher = untrained_teacher(teacher_arch, data)
    cfg = TrainConfig(**base, threads=threads)
    out = {}
    out["kd_live"] = throughput(fit(cfg, data=data, teacher=teacher, measure_speed=False, evaluate_test=False).history, n)
    started = time.perf_counter()
    cache = compute_teacher_outputs(
        teacher.model,
        data,
        seed=cfg.seed,
        epochs=cfg.epochs,
        crop_pad=cfg.crop_pad,
        flip=cfg.flip,
        attention=False,
        device=resolve_device(cfg.device),
    )
    out["cache_build_s"] = time.perf_counter() - started
    return out, teacher, cache


def measure_kd_cached(base: dict, data, threads: int, teacher: Teacher, cache) -> float:
    cfg = TrainConfig(**base, threads=threads)
    history = fit(cfg, data=data, teacher=teacher, teacher_outputs=cache, measure_speed=False, evaluate_test=False).history
    return throughput(history, len(data.train_x))


def measure_bare(base: dict, data, threads: int) -> float:
    """The CE run in this process, as `kdsearch train` runs it."""
    cfg = TrainConfig(**{**base, "method": "ce", "threads": threads})
    return throughput(fit(cfg, data=data, measure_speed=False, evaluate_test=False).history, len(data.train_x))


def measure_in_trial(base: dict, data, threads: int) -> float:
    """The CE run as a one-trial sweep through kdsearch.ray_trials, with `threads` CPUs per trial."""
    from kdsearch import ray_trials
    from kdsearch.search.options import SweepOptions
    from kdsearch.search.space import parse_sweep

    spec = parse_sweep(
        {
            "fixed": {**base, "method": "ce"},
            "space": {"lr": {"choice": [base.get("lr", 0.05)]}},
            "search": {"num_samples": 1, "scheduler": "fifo", "sampler": "random"},
        },
        "speed-benchmark",
    )
    with tempfile.TemporaryDirectory() as storage:
        ray_trials.start_ray(None, num_cpus=threads)
        try:
            trials = ray_trials.run_trials(
                spec,
                data,
                None,
                SweepOptions(cpus_per_trial=threads, verbose=0),
                storage=storage,
                name="speed",
            )
        finally:
            ray_trials.stop_ray()
    return throughput(trials[0].history, len(data.train_x))


def _process_name(pid: int) -> str:
    """A process's name, and for a Python process the script it runs (Ray's log_monitor.py...)."""
    if pid == os.getpid():
        return "this benchmark (the sweep's driver)"
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        if name.startswith("python"):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            scripts = [a.decode(errors="replace") for a in args[1:] if a.endswith(b".py")]
            name = Path(scripts[0]).name if scripts else name
        return name
    except OSError:
        return "?"


class CpuBeside:
    """What the rest of the machine uses while a training run keeps its threads busy, in % of
    one core: Ray's servers, Tune's loop, the kernel. On cores the training fills, each of their
    wake-ups preempts a training thread (and its partner waits for it), yet a throughput ratio
    cannot resolve a 2% cost here, where one run varies by +/-14%; CPU time can. Each second it
    reads the machine's busy time and every process's; the seconds counted are those in which
    the busiest process used at least 80% of `threads` cores (the training epochs, not start-up
    or evaluation)."""

    def __init__(self, threads: int, interval: float = 1.0):
        self.threads, self.interval = threads, interval
        self.seconds, self.other_ticks = 0.0, 0
        self.by_process: dict[str, int] = {}  # "name pid": ticks over the seconds counted
        self._names: dict[int, str] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    @staticmethod
    def _read() -> tuple[int, dict[int, int]]:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))  # user nice system irq softirq
        procs = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # ended meanwhile
                procs[int(entry.name)] = int(stat[11]) + int(stat[12])  # utime + stime
        return busy, procs

    def _watch(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        before, then = self._read(), time.monotonic()
        while not self._done.wait(self.interval):
            after, now = self._read(), time.monotonic()
            used = {pid: t - before[1].get(pid, t) for pid, t in after[1].items()}
            top = max(used.values(), default=0)
            if top >= 0.8 * self.threads * (now - then) * tick:
                self.seconds += now - then
                self.other_ticks += after[0] - before[0] - top
                for pid, ticks in used.items():
                    if 0 < ticks < top:
                        if pid not in self._names:
                            self._names[pid] = f"{_process_name(pid)} {pid}"
                        key = self._names[pid]
                        self.by_process[key] = self.by_process.get(key, 0) + ticks
            before, then = after, now

    def __enter__(self):
        if Path("/proc/stat").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def top(self, n: int = 6) -> dict[str, float]:
        """The processes that used most of it, each in % of one core."""
        scale = 100 / (self.seconds * os.sysconf("SC_CLK_TCK")) if self.seconds else 0
        ranked = sorted(self.by_process.items(), key=lambda kv: -kv[1])[:n]
        return {name: round(ticks * scale, 2) for name, ticks in ranked}

    @property
    def percent(self) -> float:
        """Everything else, in % of one core, over the seconds the training ran flat out."""
        if not self.seconds:
            return float("nan")
        return 100 * max(self.other_ticks, 0) / (self.seconds * os.sysconf("SC_CLK_TCK"))


def measure_pipeline(data, batch_size: int, pad: int, seconds: float) -> dict:
    """Augmented, normalised batches per second: torchvision DataLoader + PIL against DeviceData."""
    import torchvision.transforms as T
    from PIL import Image

    mean, std = data.mean, data.std
    images = [Image.fromarray(x[0].numpy()) for x in data.train_x]  # how torchvision's datasets hold them
    transform = T.Compose(
        [T.RandomCrop(data.image_size[0], padding=pad), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )

    class PILSet(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i]), int(data.train_y[i])

    def rate(batches) -> float:
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for x, *_ in batches():
                done += len(x)
                if time.perf_counter() - started >= seconds:
                    break
        return done / (time.perf_counter() - started)

    workers = min(2, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        PILSet(), batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True
    )
    device_data = DeviceData(data.train_x, data.train_y, mean, std, resolve_device("auto"), pad=pad)
    epoch = iter(range(10**9))
    return {
        "dataloader_pil": rate(lambda: loader),
        "in_memory": rate(lambda: device_data.train_batches(batch_size, 0, next(epoch), True)),
        "dataloader_workers": workers,
    }


def _fit_history(cfg: dict, shared) -> list[float]:
    from kdsearch.ray_trials.trainable import unpack

    history = fit(TrainConfig(**cfg), data=unpack(shared), measure_speed=False, evaluate_test=False).history
    return [h["time/epoch_train_s"] for h in history]


def measure_in_ray_task(base: dict, data, threads: int) -> float:
    """The CE run in a plain Ray task (fit in the worker's main thread, data from the object
    store): what any Ray-hosted trial could reach, as a reference for the trial's overhead."""
    import ray

    from kdsearch import ray_trials
    from kdsearch.ray_trials.trainable import payload

    ray_trials.start_ray(None, num_cpus=threads)
    try:
        cfg = {**base, "method": "ce", "threads": threads}
        times = ray.get(ray.remote(num_cpus=threads)(_fit_history).remote(cfg, ray.put(payload(data))))
    finally:
        ray_trials.stop_ray()
    return len(data.train_x) * len(times[1:]) / sum(times[1:])


def measure_startup(quick: bool, cache: str) -> float:
    """Seconds from `kdsearch sweep` starting to the first trial result on disk (teacher already cached)."""
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "startup.yaml"
        space.write_text(
            f"fixed: {{method: kd, dataset: digits, epochs: 3, cache_dir: {cache}}}\n"
            "space: {alpha: {uniform: [0.5, 0.9]}}\nsearch: {num_samples: 1, scheduler: fifo}\n"
        )
        cmd = [
            sys.executable,
            "-m",
            "kdsearch",
            "sweep",
            str(space),
            "--storage",
            f"{tmp}/s",
            "--tracking-uri",
            f"sqlite:///{tmp}/m.db",
            "--quiet",
        ]
        subprocess.run(
            [sys.executable, "-m", "kdsearch", "teacher", "--dataset", "digits", "--cache-dir", cache, "--quiet"],
            check=True,
            capture_output=True,
        )
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = None
        while proc.poll() is None and first is None:
            results = list(Path(tmp, "s", "startup").glob("trial_*/result.json"))
            if results and results[0].stat().st_size > 0:
                first = time.perf_counter() - started
            time.sleep(0.05)
        proc.wait()
        return first if first is not None else float("nan")


def measure_many(trials: int, cache: str, concurrency: int = 2) -> dict:
    """A sweep of ``trials`` one-epoch digits trials, ``concurrency`` at a time, as a user runs it
    (`kdsearch sweep` in its own process): per-trial overhead, the driver's peak memory, the
    time MLflow logging took, the report's build time, and whether MLflow holds every trial
    exactly once."""
    import sqlite3

    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "many.yaml"
        space.write_text(
            f"name: many\nfixed: {{method: kd, dataset: digits, teacher: resnet20, student: resnet8, epochs: 1, cache_dir: {cache}}}\n"
            "space: {alpha: {uniform: [0.1, 0.9]}, temperature: {loguniform: [1, 10]}}\n"
            f"search: {{num_samples: {trials}, sampler: random, scheduler: fifo}}\n"
        )
        db = Path(tmp) / "m.db"
        cmd = [
            sys.executable,
            "-m",
            "kdsearch",
            "sweep",
            str(space),
            "--storage",
            f"{tmp}/s",
            "--tracking-uri",
            f"sqlite:///{db}",
        ]
        cmd += ["--max-concurrent", str(concurrency), "--cpus-per-trial", "1", "--quiet"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"the {trials}-trial sweep failed: {proc.stderr.read().decode()[-2000:]}")
        manifest = json.loads(Path(tmp, "s", "many", "sweep.json").read_text())
        totals, steps = [], []
        for result in Path(tmp, "s", "many").glob("trial_*/result.json"):
            lines = [json.loads(line) for line in result.read_text().splitlines()]
            totals.append(lines[-1]["time_total_s"] if lines else 0.0)
            steps.append(sum(line.get("time/epoch_train_s", 0.0) for line in lines))
        with sqlite3.connect(db) as con:
            runs = con.execute(
                "select count(*), count(distinct value) from tags where key = 'kdsearch.trial_id' and run_uuid in "
                "(select run_uuid from runs where lifecycle_stage = 'active')"
            ).fetchone()
    t = manifest["timings"]
    return {
        "trials": trials,
        "concurrency": concurrency,
        "wall_s": wall,
        "trials_phase_s": t["trials_s"],
        "sum_trial_s": sum(totals),
        "sum_train_steps_s": sum(steps),  # the training steps alone (time/epoch_train_s)
        "trial_results": len(totals),
        "overhead_per_trial_s": (t["trials_s"] - sum(totals) / concurrency) / trials,
        "driver_peak_rss_mb": usage.ru_maxrss / 1024,
        "mlflow_live_s": t["mlflow_live_s"],
        "mlflow_end_s": t["mlflow_end_s"],
        "report_s": t["report_s"],
        "mlflow_trial_runs": runs[0],
        "mlflow_distinct_trials": runs[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, short: the CI setting")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument(
        "--repeats", type=int, help="rounds of bare fit, trial and Ray task, side by side (default 3; --quick: 1)"
    )
    parser.add_argument(
        "--many", type=int, nargs="+", help="trial counts of the many-trials sweeps (default: 100 500; --quick or 0: none)"
    )
    args = parser.parse_args()
    threads = set_threads(None)
    device = resolve_device("auto")
    if args.quick:
        data = load_dataset("digits")
        base = dict(dataset="digits", student="resnet8", teacher="resnet56", epochs=4, batch_size=128, lr=0.05)
        teacher_arch = "resnet56"
    else:
        data = load_dataset("fashion_mnist", train_subset=6000, val_fraction=0.02)
        base = dict(
            dataset="fashion_mnist",
            student="resnet8",
            teacher="resnet56",
            epochs=5,
            batch_size=128,
            train_subset=6000,
            val_fraction=0.02,
        )
        teacher_arch = "resnet56"
    results = {"device": str(device), "threads": threads, "quick": args.quick, "images": len(data.train_x), "dataset": data.name}
    results["train"], teacher, cache = measure_training(base, data, teacher_arch, threads)
    # Bare fit, trial and task side by side, `--repeats` times: one run of bare fit varies by
    # +/-14% on this shared machine from one minute to the next, so each ratio compares runs
    # made within a minute of each other, and the table gives the medians.
    rounds = []
    for i in range(args.repeats or (1 if args.quick else 3)):
        row = {}
        for key, measure in (("bare", measure_bare), ("trial", measure_in_trial), ("task", measure_in_ray_task)):
            with CpuBeside(threads) as cpu:
                row[key] = measure(base, data, threads)
            row[f"{key}_cpu_beside"] = cpu.percent
            row[f"{key}_cpu_beside_by_process"] = cpu.top()
        row["kd_cached"] = measure_kd_cached(base, data, threads, teacher, cache)
        rounds.append(row)
        print(
            f"round {i + 1}: bare {row['bare']:,.0f}, trial {row['trial']:,.0f}, task {row['task']:,.0f}, "
            f"KD cached {row['kd_cached']:,.0f} img/s; beside the first three "
            f"{_percent(row['bare_cpu_beside'])}, {_percent(row['trial_cpu_beside'])}, {_percent(row['task_cpu_beside'])} of a core",
            flush=True,
        )
    results["train"]["rounds"] = rounds
    results["train"]["ce"] = rounds[0]["bare"]  # the CE-only row: the first bare run
    results["train"]["ce_in_trial"] = statistics.median(r["trial"] for r in rounds)
    results["train"]["ce_in_ray_task"] = statistics.median(r["task"] for r in rounds)
    results["train"]["trial_ratio"] = statistics.median(r["trial"] / r["bare"] for r in rounds)
    results["train"]["task_ratio"] = statistics.median(r["task"] / r["bare"] for r in rounds)
    results["train"]["kd_cached"] = statistics.median(r["kd_cached"] for r in rounds)
    results["train"]["kd_cached_step_ratio"] = statistics.median(r["bare"] / r["kd_cached"] for r in rounds)
    for key in ("bare", "trial", "task"):
        results["train"][f"{key}_cpu_beside"] = statistics.median(r[f"{key}_cpu_beside"] for r in rounds)
    results["pipeline"] = measure_pipeline(data, 128, 2, seconds=3 if args.quick else 8)
    with tempfile.TemporaryDirectory() as cache:
        runs = [measure_startup(args.quick, cache) for _ in range(1 if args.quick else 3)]
    results["startup_runs_s"] = runs
    results["startup_s"] = statistics.median(runs)  # one start varies by ~0.5 s here
    if args.many != [0] and (not args.quick or args.many):
        with tempfile.TemporaryDirectory() as cache:
            counts = args.many or [100, 500]
            results["many"] = [measure_many(n, cache) for n in counts]
    write(results, Path(args.out))


def write(r: dict, out: Path) -> None:
    t, p = r["train"], r["pipeline"]
    rows = [
        ("CE-only student", f"{t['ce']:,.0f} img/s", "1.00x", "baseline"),
        ("KD, live teacher", f"{t['kd_live']:,.0f} img/s", f"{t['ce'] / t['kd_live']:.2f}x step time", "(about 3x expected for resnet56 -> resnet8)"),
        (f"KD, cached teacher ({_step_rounds(t)})", f"{t['kd_cached']:,.0f} img/s", f"{t['kd_cached_step_ratio']:.2f}x step time",
         _goal(t["kd_cached_step_ratio"] <= 1.10, "<= 1.10x")),
        ("teacher cache, built once", f"{t['cache_build_s']:.1f} s", "", "paid once per sweep"),
        (f"CE inside a Ray Tune trial ({_rounds(t, 'trial')})", f"{t['ce_in_trial']:,.0f} img/s", f"{t['trial_ratio']:.2f}x bare fit", _goal(t["trial_ratio"] >= 0.97, ">= 0.97x")),
        (f"CE in a plain Ray task (reference; {_rounds(t, 'task')})", f"{t['ce_in_ray_task']:,.0f} img/s", f"{t['task_ratio']:.2f}x bare fit", "what a trial in Ray could reach"),
        ("CPU used beside the training, % of one core (Ray's servers, Tune's loop, the kernel; median): bare fit / trial / task",
         " / ".join(_percent(t.get(k + "_cpu_beside")) for k in ("bare", "trial", "task")), "", "each wake-up preempts a training thread"),
        (f"DataLoader + PIL ({p['dataloader_workers']} workers)", f"{p['dataloader_pil']:,.0f} img/s", "1.00x", "baseline"),
        ("in-memory batched pipeline", f"{p['in_memory']:,.0f} img/s", f"{p['in_memory'] / p['dataloader_pil']:.1f}x", _goal(p["in_memory"] / p["dataloader_pil"] >= 5, ">= 5x")),
        (f"sweep start to first trial result (median of: {', '.join(f'{x:.1f}' for x in r['startup_runs_s'])} s)", f"{r['startup_s']:.1f} s", "",
         _goal(r["startup_s"] <= 8, "<= 8 s")),
    ]  # fmt: skip
    for m in r.get("many", []):
        rows += [
            (f"{m['trials']} one-epoch trials, {m['concurrency']} at a time: overhead per trial "
             f"((Tune loop {m['trials_phase_s']:.0f} s - trial time {m['sum_trial_s']:.0f} s / {m['concurrency']}) / {m['trials']})",
             f"{m['overhead_per_trial_s']:.3f} s", "", _goal(m["overhead_per_trial_s"] <= 0.2, "<= 0.2 s")),
            (f"{m['trials']} trials: driver peak memory (whole command {m['wall_s']:.0f} s)", f"{m['driver_peak_rss_mb']:,.0f} MB", "", "must not grow with trials"),
            (f"{m['trials']} trials: MLflow logging, live / at the end", f"{m['mlflow_live_s']:.1f} s / {m['mlflow_end_s']:.1f} s", "", ""),
            (f"{m['trials']} trials: report build", f"{m['report_s']:.1f} s", "", _goal(m["report_s"] <= 10, "<= 10 s")),
            (f"{m['trials']} trials: trial runs in MLflow (distinct trials)", f"{m['mlflow_trial_runs']} ({m['mlflow_distinct_trials']})", "",
             _goal(m["mlflow_trial_runs"] == m["mlflow_distinct_trials"] == m["trials"], "every trial exactly once")),
        ]  # fmt: skip
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {r['device']}, {r['threads']} threads"
    title = f"Speed ({r['dataset']}, {r['images']} training images{', quick' if r['quick'] else ''})"
    lines = [f"# {title}", "", f"Machine: {machine}.", "", "| measurement | value | ratio | goal |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    for key in ("trial", "task"):
        by_process = t["rounds"][0].get(f"{key}_cpu_beside_by_process")
        if by_process:
            shares = ", ".join(f"{name} {share:.2f}%" for name, share in by_process.items())
            lines += ["", f"Beside the {key} (round 1, % of one core; process names with their ids): {shares}."]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"speed-{r['device'].split(':')[0]}{'-quick' if r['quick'] else ''}"
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2))
    print("\n".join(lines))
    print(f"\nwritten: {stem}.md, {stem}.json")


def _rounds(t: dict, key: str) -> str:
    """Each round's ratio to the bare fit run beside it; the table's ratio is their median."""
    ratios = ", ".join(f"{r[key] / r['bare']:.2f}" for r in t["rounds"])
    return f"median of {len(t['rounds'])} rounds: {ratios}x" if len(t["rounds"]) > 1 else f"{ratios}x"


def _step_rounds(t: dict) -> str:
    """KD with the cache against the bare CE run of the same round, as step-time ratios."""
    ratios = ", ".join(f"{r['bare'] / r['kd_cached']:.2f}" for r in t["rounds"])
    return (
        f"median of {len(t['rounds'])} rounds beside the bare CE run: {ratios}x"
        if len(t["rounds"]) > 1
        else f"beside the bare CE run: {ratios}x"
    )


def _percent(value: float | None) -> str:
    """A CPU share, or "-" where no second of the run kept its threads busy (--quick's runs are shorter)."""
    return "-" if value is None or value != value else f"{value:.1f}%"


def _goal(ok: bool, goal: str) -> str:
    return f"{goal}: {'holds' if ok else 'MISSED'}"


if __name__ == "__main__":
    main()

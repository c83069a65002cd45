"""GPU speed: ResNet-18 students on CIFAR-shaped data held in GPU memory, ratios from one run.

    python benchmarks/gpu.py --data-dir DIR       # one GPU, over 10 minutes (an H200 had not finished in 9)
    python benchmarks/gpu.py --device cpu --tiny  # 1.5 minutes on 2 CPUs: what CI runs, so it never rots

Measures, each part on its own (--parts; a part that fails is reported, the others still run):
  - sweeps: real `kdsearch sweep` runs (Ray Tune, Optuna, MLflow): one CE trial holding the whole
    GPU against four at --gpus-per-trial 0.25 (aggregate img/s); then 16 KD trials ResNet-50 ->
    ResNet-18 on Fashion-MNIST resized to 32x32, four per GPU, TPE + ASHA: wall time (teacher and
    trials), best validation accuracy, and the GPU memory each trial starts with (reused actors);
  - train (training steps only, the first epoch dropped as warm-up): ResNet-18 (CIFAR stem)
    student throughput on 50,000 synthetic uint8 32x32x3 images held in GPU memory: fp32;
    bf16 autocast + channels_last; + torch.compile; KD ResNet-50 -> ResNet-18: the live teacher
    and the cached teacher against CE alone; the GPU memory left allocated after each run;
  - profile: torch.profiler tables of bf16 + channels_last steps, CE and KD from the cached teacher.
Writes <out>/speed-gpu[-tiny].{md,json} and <out>/profile-gpu[-tiny].txt. The sweeps read
Fashion-MNIST from --data-dir (or /usr/share/datasets/fashion-mnist); --tiny uses digits.

The synthetic data are random pixels and labels: the speed of a step does not depend on them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from kdsearch import TrainConfig, fit  # noqa: E402
from kdsearch.data.splits import DatasetSplits  # noqa: E402
from kdsearch.models import build_model  # noqa: E402
from kdsearch.models.checkpoint import model_spec  # noqa: E402
from kdsearch.search.record import Objective
from kdsearch.teacher.outputs import compute_teacher_outputs  # noqa: E402
from kdsearch.teacher.weights import Teacher  # noqa: E402

ROOT = Path(__file__).resolve().parent
# Full run: the setting (50,000 CIFAR-shaped images, ResNet-50 -> ResNet-18). Tiny: the
# same code paths with models and data a 2-core CPU runs in seconds.
SIZES = {
    "full": dict(images=50_000, val=1_000, side=32, student="resnet18", teacher="resnet50", batch=512, epochs=3),
    "tiny": dict(images=512, val=64, side=16, student="resnet8", teacher="resnet20", batch=64, epochs=2),
}  # fmt: skip


def synthetic(n: int, n_val: int, side: int, seed: int = 0) -> DatasetSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n + n_val, 3, side, side), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n + n_val,), generator=g)
    return DatasetSplits(
        "synthetic-cifar",
        x[:n],
        y[:n],
        x[n:],
        y[n:],
        x[n:],
        y[n:],
        [str(i) for i in range(10)],
        False,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )


def throughput(history: list[dict], n: int) -> float:
    epochs = history[1:] or history
    return n * len(epochs) / sum(h["time/epoch_train_s"] for h in epochs)


def untrained_teacher(arch: str, data: DatasetSplits) -> Teacher:
    model = build_model(arch, data.num_outputs, data.in_channels, "cifar")
    return Teacher(model, arch, {}, None, model_spec(arch, data.num_outputs, data.in_channels, "cifar", 1.0))


def memory_mb(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated() / 2**20


def base_config(size: dict, device: str, **extra) -> TrainConfig:
    values = dict(
        method="ce",
        dataset="cifar10",
        student=size["student"],
        teacher=size["teacher"],
        epochs=size["epochs"],
        batch_size=size["batch"],
        lr=0.05,
        crop_pad=4,
        flip=True,
        device=device,
        eval_batch_size=1024,
        threads=None,
    )
    return TrainConfig(**{**values, **extra})


def timed_fit(cfg: TrainConfig, data: DatasetSplits, memory: list, label: str, **kwargs) -> float:
    result = fit(cfg, data=data, measure_speed=False, evaluate_test=False, **kwargs)
    rate = throughput(result.history, len(data.train_x))
    del result
    memory.append((label, memory_mb(torch.device(cfg.device))))
    print(f"{label}: {rate:,.0f} img/s", flush=True)
    return rate


def measure_training(size: dict, data: DatasetSplits, device: str) -> tuple[dict, list]:
    memory = [("start", memory_mb(torch.device(device)))]
    out = {}
    s = size["student"]
    out["fp32"] = timed_fit(base_config(size, device, amp=False, channels_last=False), data, memory, f"{s} fp32")
    out["bf16_cl"] = timed_fit(base_config(size, device, amp=True, channels_last=True), data, memory, f"{s} bf16 + channels_last")
    out["bf16_cl_2x_batch"] = timed_fit(
        base_config(size, device, amp=True, channels_last=True, batch_size=2 * size["batch"]),
        data,
        memory,
        f"{s} bf16 + channels_last, batch {2 * size['batch']}",
    )
    out["bf16_cl_compile"] = timed_fit(
        base_config(size, device, amp=True, channels_last=True, compile=True), data, memory, f"{s} bf16 + channels_last + compile"
    )
    fast = dict(amp=True, channels_last=True)
    teacher = untrained_teacher(size["teacher"], data)
    kd = base_config(size, device, method="kd", **fast)
    out["kd_live"] = timed_fit(kd, data, memory, f"KD, live {size['teacher']} teacher", teacher=teacher)
    r = kd
    started = time.perf_counter()
    cache = compute_teacher_outputs(
        teacher.model,
        data,
        seed=r.seed,
        epochs=r.epochs,
        crop_pad=r.crop_pad,
        flip=r.flip,
        attention=False,
        device=torch.device(device),
        amp=bool(r.amp),  # the run's precision: a cache of another one is not used (TeacherOutputs.fits)
    )
    out["cache_build_s"] = time.perf_counter() - started
    out["kd_cached"] = timed_fit(kd, data, memory, "KD, cached teacher", teacher=teacher, teacher_outputs=cache)
    del cache, teacher
    memory.append(("after KD", memory_mb(torch.device(device))))
    return out, memory


SWEEPS = {
    # The sharing runs: CE students, one trial holding the whole GPU, then four at 0.25 GPU each.
    # The KD sweep: the 16 trials, ResNet-50 -> ResNet-18 on Fashion-MNIST resized to 32x32,
    # 4 trials per GPU, TPE + ASHA as the shipped search spaces use them.
    "full": dict(dataset="fashion_mnist", image_size=32, student="resnet18", teacher="resnet50", share_epochs=3,
                 share_trials=4, share_gpus=0.25, kd_trials=16, kd_epochs=8, teacher_epochs=8, kd_gpus=0.25, cpus=2,
                 batch=128, timeout=330),
    "tiny": dict(dataset="digits", image_size=None, student="resnet8", teacher="resnet20", share_epochs=2,
                 share_trials=2, share_gpus=0, kd_trials=4, kd_epochs=2, teacher_epochs=2, kd_gpus=0, cpus=1,
                 batch=64, timeout=300),
}  # fmt: skip


def sweep_spec(sw: dict, name: str, method: str, trials: int, epochs: int) -> dict:
    fixed = dict(method=method, dataset=sw["dataset"], student=sw["student"], epochs=epochs, batch_size=sw["batch"])
    if sw["image_size"]:
        fixed["image_size"] = sw["image_size"]
    if method == "ce":  # the sharing runs: every trial the same work, no stopping
        space = {"weight_decay": {"loguniform": [1e-5, 1e-4]}}
        search = dict(num_samples=trials, metric="val/acc", mode="max", sampler="random", scheduler="fifo", seed=0)
    else:
        fixed.update(teacher=sw["teacher"], teacher_epochs=sw["teacher_epochs"])
        space = {
            "temperature": {"loguniform": [1, 20]},
            "alpha": {"uniform": [0, 1]},
            "lr": {"loguniform": [1e-2, 3e-1]},
            "weight_decay": {"loguniform": [1e-5, 1e-3]},
        }
        search = dict(
            num_samples=trials,
            metric="val/acc",
            mode="max",
            sampler="tpe",
            scheduler="asha",
            grace_period=2,
            reduction_factor=3,
            seed=0,
        )
    return {"name": name, "fixed": fixed, "space": space, "search": search}


def run_sweep(work: Path, spec: dict, gpus: float, sw: dict, data_dir: str | None) -> dict:
    """One real ``kdsearch sweep`` (Ray Tune, Optuna, MLflow) in a child process; its trials' records."""
    import yaml

    from kdsearch.search.folder import SweepFolder, load_trials

    path = work / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "kdsearch",
        "sweep",
        str(path),
        "--storage",
        str(work / "sweeps"),
        "--quiet",
        "--tracking-uri",
        f"sqlite:///{work}/mlflow.db",
        "--gpus-per-trial",
        str(gpus),
        "--cpus-per-trial",
        str(sw["cpus"]),
    ]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    env = {
        **os.environ,
        "KDSEARCH_CACHE": str(work / "cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")]),
    }
    log = work / f"{spec['name']}.log"
    started = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=sw["timeout"])
        except subprocess.TimeoutExpired:
            # Past its limit: stopped as a user's Ctrl-C stops it (trials saved), and what the
            # trials reported by then is the result, marked as cut short.
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            code = "timeout"
    wall = time.perf_counter() - started
    folder = SweepFolder(work / "sweeps" / spec["name"])
    if code != 0 and code != "timeout":
        raise RuntimeError(f"sweep {spec['name']} failed ({code}): {log.read_text().strip()[-2000:]}")
    manifest = folder.read_manifest() if (folder.path / "sweep.json").is_file() else {}
    return {"wall_s": wall, "trials": load_trials(folder.path), "manifest": manifest, "cut_short": code == "timeout"}


def trial_rate(history: list[dict], n_train: int) -> float:
    """A trial's training img/s over its epochs after the first (warm-up)."""
    epochs = [h for h in history if "time/epoch_train_s" in h][1:] or history
    return n_train * len(epochs) / sum(h["time/epoch_train_s"] for h in epochs)


def measure_sweeps(device: str, size_name: str, data_dir: str | None, out: dict, save=lambda: None) -> None:
    """Through real Ray Tune sweeps: one trial alone against several sharing the GPU (aggregate img/s),
    then the 16-trial KD sweep (wall time, best validation accuracy, GPU memory per trial). Fills
    ``out`` as it goes: a part that breaks or runs out of time keeps what came before it."""
    from kdsearch.data import load_dataset

    sw = SWEEPS[size_name]
    n_train = load_dataset(sw["dataset"], data_dir, image_size=sw["image_size"]).sizes()["train"]
    gpus = lambda g: g if device.startswith("cuda") else 0  # noqa: E731
    out.update(sweep_settings=sw, n_train=n_train)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        alone = run_sweep(work, sweep_spec(sw, "alone", "ce", 1, sw["share_epochs"]), gpus(1), sw, data_dir)
        out["x1"] = trial_rate(alone["trials"][0].history, n_train)
        save()
        shared = run_sweep(
            work, sweep_spec(sw, "shared", "ce", sw["share_trials"], sw["share_epochs"]), gpus(sw["share_gpus"]), sw, data_dir
        )
        out["xn_each"] = [trial_rate(t.history, n_train) for t in shared["trials"]]
        out["xn"] = sum(out["xn_each"])
        save()
        print(
            f"1 trial alone: {out['x1']:,.0f} img/s; {len(out['xn_each'])} trials sharing: {out['xn']:,.0f} img/s together",
            flush=True,
        )
        kd = run_sweep(work, sweep_spec(sw, "kd16", "kd", sw["kd_trials"], sw["kd_epochs"]), gpus(sw["kd_gpus"]), sw, data_dir)
        trials = [t for t in kd["trials"] if t.history]
        out["kd_sweep"] = {
            "wall_s": kd["wall_s"],
            "cut_short": kd["cut_short"],
            "timings": kd["manifest"].get("timings", {}),
            "trials": len(kd["trials"]),
            "epochs_run": sum(len(t.history) for t in trials),
            "best_val_acc": max((t.score(Objective("val/acc", "max")) for t in trials), default=float("nan")),
            # in the order trials started: a reused actor's next trial starts with what the last left
            "allocated_at_start_mb": [t.history[0].get("gpu/allocated_at_start_mb") for t in trials],
            "peak_mb": [max((h.get("gpu/peak_mb") or 0) for h in t.history) for t in trials],
            "gpu_ids": sorted({str(t.history[0].get("trial/gpu_ids")) for t in trials}),
        }
        k = out["kd_sweep"]
        print(f"KD sweep of {k['trials']} trials: {k['wall_s']:.0f} s, best val/acc {k['best_val_acc']:.4f}", flush=True)


def profile_steps(size: dict, data: DatasetSplits, device: str, out: Path) -> None:
    """The top kernels of a few bf16 + channels_last training steps: CE alone, then KD from the
    cached teacher (where the KD step's extra time goes)."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    fast = dict(amp=dev.type == "cuda", channels_last=dev.type == "cuda", epochs=1)
    small = synthetic(size["batch"] * 8, size["val"], size["side"])
    teacher = untrained_teacher(size["teacher"], small)
    cache = compute_teacher_outputs(
        teacher.model, small, seed=0, epochs=1, crop_pad=4, flip=True, attention=False, device=dev, amp=fast["amp"]
    )
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    tables = []
    for label, cfg, extra in (
        ("CE", base_config(size, device, **fast), {}),
        ("KD, cached teacher", base_config(size, device, method="kd", **fast), dict(teacher=teacher, teacher_outputs=cache)),
    ):
        fit(cfg, data=small, measure_speed=False, evaluate_test=False, **extra)  # warm-up: cuDNN autotuning, allocator
        with profile(activities=activities) as prof:
            fit(cfg, data=small, measure_speed=False, evaluate_test=False, **extra)
        table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
        tables.append(f"## {label}: 8 steps of batch {size['batch']}\n\n{table}")
    out.write_text("\n\n".join(tables))


def training_rows(r: dict, goal) -> list[tuple]:
    t, st = r["train"], r["student"]
    return [
        (f"{st} fp32, batch {r['batch']}", f"{t['fp32']:,.0f} img/s", "1.00x", ""),
        (f"{st} bf16 + channels_last", f"{t['bf16_cl']:,.0f} img/s", f"{t['bf16_cl'] / t['fp32']:.2f}x", goal(t["bf16_cl"] >= 50_000, ">= 50,000 img/s")),
        (f"{st} bf16 + channels_last, batch {2 * r['batch']}", f"{t['bf16_cl_2x_batch']:,.0f} img/s", f"{t['bf16_cl_2x_batch'] / t['fp32']:.2f}x", ""),
        (f"{st} bf16 + channels_last + torch.compile", f"{t['bf16_cl_compile']:,.0f} img/s", f"{t['bf16_cl_compile'] / t['fp32']:.2f}x",
         goal(t["bf16_cl_compile"] >= 50_000, ">= 50,000 img/s")),
        (f"KD, live {r['teacher']} teacher", f"{t['kd_live']:,.0f} img/s", f"{t['bf16_cl'] / t['kd_live']:.2f}x CE step time", ""),
        ("KD, cached teacher (bf16 + channels_last)", f"{t['kd_cached']:,.0f} img/s", f"{t['bf16_cl'] / t['kd_cached']:.2f}x CE step time",
         goal(t["bf16_cl"] / t["kd_cached"] <= 1.10, "<= 1.10x")),
        ("teacher cache, built once", f"{t['cache_build_s']:.1f} s", "", f"{r['epochs']} epochs x {r['images']:,} views"),
    ]  # fmt: skip


def sweep_rows(r: dict, goal) -> list[tuple]:
    s = r["sweeps"]
    sw, rows = s.get("sweep_settings", {}), []
    if "xn" in s:
        n = len(s["xn_each"])
        where = f"{sw['share_gpus']} GPU each" if sw["share_gpus"] else "CPU"
        rows += [
            (f"Ray Tune: 1 trial alone ({sw['student']}, batch {sw['batch']})", f"{s['x1']:,.0f} img/s", "1.00x", ""),
            (f"Ray Tune: {n} trials at once ({where})", f"{s['xn']:,.0f} img/s", f"{s['xn'] / s['x1']:.2f}x", goal(s["xn"] / s["x1"] >= 1.5, ">= 1.5x")),
        ]  # fmt: skip
    if "kd_sweep" in s:
        k = s["kd_sweep"]
        what = f"KD sweep: {k['trials']} trials {sw['teacher']} -> {sw['student']} on {sw['dataset']}" + (
            f" at {sw['image_size']}x{sw['image_size']}" if sw["image_size"] else ""
        )
        rows += [
            (what + (" (cut short at its time limit)" if k["cut_short"] else ""), f"{k['wall_s']:.0f} s", "",
             goal(k["wall_s"] <= 300 and not k["cut_short"], "<= 5 minutes")),
            ("  of which the teacher (trained, its outputs cached)", f"{k['timings'].get('prepare_s', float('nan')):.0f} s", "",
             f"{sw['teacher_epochs']} epochs"),
            ("  of which the trials (Ray Tune)", f"{k['timings'].get('trials_s', float('nan')):.0f} s", "",
             f"{k['epochs_run']} trial epochs of at most {sw['kd_epochs']} (ASHA)"),
            ("KD sweep: best validation accuracy", f"{k['best_val_acc']:.4f}", "", ""),
        ]  # fmt: skip
    return rows


def write(r: dict, out: Path, tiny: bool, quiet: bool = False) -> None:
    goal = lambda ok, text: f"{text}: {'holds' if ok else 'MISSED'}" if not tiny else f"{text} (not judged in --tiny)"  # noqa: E731
    rows = []
    for part, make in (("train", training_rows), ("sweeps", sweep_rows)):
        if part in r:
            rows += make(r, goal)
    lines = [
        f"# GPU speed ({'tiny, ' if tiny else ''}{r['images']:,} synthetic {r['side']}x{r['side']}x3 images, "
        f"{r['student']} student, {r['teacher']} teacher; real sweeps)",
        "",
        f"Machine: {r['machine']}.",
        "",
        "| measurement | value | ratio | goal |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    for part, error in r.get("errors", {}).items():
        lines += ["", f"**{part} failed**: `{error}`"]
    if "memory_mb" in r:
        lines += ["", "GPU memory still allocated after each run (MB; a leak grows it run after run):", ""]
        lines += [f"- {label}: {mb:.1f}" for label, mb in r["memory_mb"]]
    if "kd_sweep" in r.get("sweeps", {}):
        k = r["sweeps"]["kd_sweep"]
        start = [round(v, 1) for v in k["allocated_at_start_mb"] if v is not None]
        lines += [
            "",
            f"KD sweep, GPU memory each trial found allocated in its process when it started (MB, in trial order; "
            f"reused actors: a leak would grow it): {start or 'not measured (no GPU)'}; "
            f"peak per trial (MB): {[round(v) for v in k['peak_mb']] if start else '-'}; GPUs Ray gave the trials: {k['gpu_ids']}.",
        ]
    lines += [
        "",
        f"Training batch {r['batch']} for the single-training rows. The sweeps are `kdsearch sweep` runs (Ray Tune, "
        "Optuna, MLflow on SQLite), timed from the command's start to its end; trial img/s drop each trial's first epoch.",
        f"Wall time of the benchmark so far: {r['wall_s']:.0f} s; parts finished: {', '.join(r.get('finished', [])) or 'none'}.",
    ]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"speed-gpu{'-tiny' if tiny else ''}"
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2, default=str))
    if not quiet:
        print("\n".join(lines))
        print(f"\nwritten: {stem}.md, {stem}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small models and data, a few seconds a part: the CI setting")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--data-dir", help="folder holding Fashion-MNIST's IDX files for the sweeps (default: kdsearch's search)")
    parser.add_argument("--parts", nargs="+", default=["sweeps", "train", "profile"], choices=["sweeps", "train", "profile"])
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA GPU is visible: run it on a GPU machine, or pass --device cpu --tiny")
    if args.tiny and args.device.startswith("cpu"):
        # Dynamo's eager backend: the compile path without a C++ toolchain or minutes of CPU compiling.
        real = torch.compile
        torch.compile = lambda fn=None, **kw: real(fn, **{**kw, "backend": "eager"})
    size_name = "tiny" if args.tiny else "full"
    size = SIZES[size_name]
    started = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    results = {
        "machine": f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "device": args.device,
        **size,
        "errors": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f"speed-gpu{'-tiny' if args.tiny else ''}.partial.json"
    save = lambda: partial.write_text(json.dumps(results, indent=2, default=str))  # noqa: E731
    for part in args.parts:  # each part on its own: one that fails is reported, the others still measured
        try:
            if part == "sweeps":
                measure_sweeps(args.device, size_name, args.data_dir, results.setdefault("sweeps", {}), save)
            elif part == "train":
                data = synthetic(size["images"], size["val"], size["side"])
                results["train"], results["memory_mb"] = measure_training(size, data, args.device)
            else:
                data = synthetic(size["images"], size["val"], size["side"])
                profile_steps(size, data, args.device, out / f"profile-gpu{'-tiny' if args.tiny else ''}.txt")
        except Exception as exc:  # noqa: BLE001 - a benchmark part that breaks is a result to report
            results["errors"][part] = f"{type(exc).__name__}: {exc}"[-3000:]
            print(f"part {part} failed: {results['errors'][part]}", file=sys.stderr, flush=True)
        else:
            results.setdefault("finished", []).append(part)
        save()
        # The result files after every part: a run cut short (out of GPU time) keeps what finished.
        write({**results, "wall_s": time.perf_counter() - started}, out, args.tiny, quiet=True)
    results["wall_s"] = time.perf_counter() - started
    write(results, out, args.tiny)
    partial.unlink(missing_ok=True)
    if results["errors"]:
        raise SystemExit(f"benchmarks/gpu.py: {len(results['errors'])} part(s) failed: {', '.join(results['errors'])}")


if __name__ == "__main__":
    main()

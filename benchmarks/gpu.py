"""GPU speed: ResNet-18 students on CIFAR-shaped data held in GPU memory, ratios from one run.

    python benchmarks/gpu.py                      # one GPU, about 5 minutes on an H100
    python benchmarks/gpu.py --device cpu --tiny  # a few seconds a part: what CI runs, so it never rots

Measures (training steps only, the first epoch dropped as warm-up):
  - ResNet-18 (CIFAR stem) student throughput on 50,000 synthetic uint8 32x32x3 images:
    fp32; bf16 autocast + channels_last; + torch.compile;
  - KD ResNet-50 -> ResNet-18: the live teacher and the cached teacher against CE alone;
  - one training alone against four at once sharing the GPU (each process limited to a quarter
    of its memory, as four Ray trials at --gpus-per-trial 0.25 are): aggregate img/s;
  - the GPU memory left allocated after each run (a leak would grow it run after run);
  - a torch.profiler table of the bf16 + channels_last training steps (the top CUDA kernels).
Writes <out>/speed-gpu[-tiny].{md,json} and <out>/profile-gpu[-tiny].txt.

The synthetic data are random pixels and labels: the speed of a step does not depend on them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from kdsearch import TrainConfig, fit  # noqa: E402
from kdsearch.checkpoint import model_spec  # noqa: E402
from kdsearch.data.splits import DatasetSplits  # noqa: E402
from kdsearch.models import build_model  # noqa: E402
from kdsearch.teacher_outputs import compute_teacher_outputs  # noqa: E402
from kdsearch.teachers import Teacher  # noqa: E402

ROOT = Path(__file__).resolve().parent
# Full run: the setting (50,000 CIFAR-shaped images, ResNet-50 -> ResNet-18). Tiny: the
# same code paths with models and data a 2-core CPU runs in seconds.
SIZES = {
    "full": dict(images=50_000, val=1_000, side=32, student="resnet18", teacher="resnet50", batch=512, epochs=3, share_batch=128, share_epochs=3),
    "tiny": dict(images=512, val=64, side=16, student="resnet8", teacher="resnet20", batch=64, epochs=2, share_batch=64, share_epochs=2),
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


def child(args: argparse.Namespace) -> None:
    """One training among several sharing the GPU: waits for the others, then trains."""
    size = SIZES[args.size]
    device = torch.device(args.device)
    if device.type == "cuda" and args.fraction < 1:
        torch.cuda.set_per_process_memory_fraction(args.fraction)
    data = synthetic(size["images"] // args.concurrent, size["val"], size["side"], seed=args.rank)
    cfg = base_config(
        size,
        args.device,
        amp=device.type == "cuda",
        channels_last=device.type == "cuda",
        batch_size=size["share_batch"],
        epochs=size["share_epochs"],
        threads=max(1, (os.cpu_count() or 1) // args.concurrent),
    )
    torch.backends.cudnn.benchmark = True
    Path(args.ready).touch()
    while len(list(Path(args.ready).parent.glob("ready-*"))) < args.concurrent:  # start together
        time.sleep(0.01)
    result = fit(cfg, data=data, measure_speed=False, evaluate_test=False)
    Path(args.result).write_text(json.dumps({"img_s": throughput(result.history, len(data.train_x))}))


def measure_sharing(size: dict, device: str, size_name: str) -> dict:
    """Aggregate img/s of 1 and of 4 trainings at once (each process a quarter of the memory)."""
    out = {}
    for concurrent in (1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            procs = []
            for rank in range(concurrent):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--size",
                    size_name,
                    "--device",
                    device,
                    "--concurrent",
                    str(concurrent),
                    "--rank",
                    str(rank),
                    "--fraction",
                    str(1 / concurrent),
                    "--ready",
                    f"{tmp}/ready-{rank}",
                    "--result",
                    f"{tmp}/result-{rank}.json",
                ]
                procs.append(subprocess.Popen(cmd))
            codes = [p.wait() for p in procs]
            if any(codes):
                raise SystemExit(f"a sharing child failed (exit codes {codes})")
            rates = [json.loads(Path(f"{tmp}/result-{r}.json").read_text())["img_s"] for r in range(concurrent)]
        out[f"x{concurrent}"] = sum(rates)
        out[f"x{concurrent}_each"] = rates
        print(f"{concurrent} training(s) sharing the device: {sum(rates):,.0f} img/s together", flush=True)
    return out


def profile_steps(size: dict, data: DatasetSplits, device: str, out: Path) -> None:
    """The top kernels of a few bf16 + channels_last ResNet-18 training steps."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    cfg = base_config(size, device, amp=dev.type == "cuda", channels_last=dev.type == "cuda", epochs=1)
    small = synthetic(size["batch"] * 8, size["val"], size["side"])
    fit(cfg, data=small, measure_speed=False, evaluate_test=False)  # warm-up: cuDNN autotuning, allocator
    with profile(activities=activities) as prof:
        fit(cfg, data=small, measure_speed=False, evaluate_test=False)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    out.write_text(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70))


def write(r: dict, out: Path, tiny: bool) -> None:
    t, s, st = r["train"], r["sharing"], r["student"]
    goal = lambda ok, text: f"{text}: {'holds' if ok else 'MISSED'}" if not tiny else f"{text} (not judged in --tiny)"  # noqa: E731
    rows = [
        (f"{st} fp32, batch {r['batch']}", f"{t['fp32']:,.0f} img/s", "1.00x", ""),
        (f"{st} bf16 + channels_last", f"{t['bf16_cl']:,.0f} img/s", f"{t['bf16_cl'] / t['fp32']:.2f}x", goal(t["bf16_cl"] >= 50_000, ">= 50,000 img/s")),
        (f"{st} bf16 + channels_last, batch {2 * r['batch']}", f"{t['bf16_cl_2x_batch']:,.0f} img/s", f"{t['bf16_cl_2x_batch'] / t['fp32']:.2f}x", ""),
        (f"{st} bf16 + channels_last + torch.compile", f"{t['bf16_cl_compile']:,.0f} img/s", f"{t['bf16_cl_compile'] / t['fp32']:.2f}x",
         goal(t["bf16_cl_compile"] >= 50_000, ">= 50,000 img/s")),
        (f"KD, live {r['teacher']} teacher", f"{t['kd_live']:,.0f} img/s", f"{t['bf16_cl'] / t['kd_live']:.2f}x CE step time", ""),
        ("KD, cached teacher (bf16 + channels_last)", f"{t['kd_cached']:,.0f} img/s", f"{t['bf16_cl'] / t['kd_cached']:.2f}x CE step time",
         goal(t["bf16_cl"] / t["kd_cached"] <= 1.10, "<= 1.10x")),
        ("teacher cache, built once", f"{t['cache_build_s']:.1f} s", "", f"{r['epochs']} epochs x {r['images']:,} views"),
        (f"1 training alone (batch {r['share_batch']})", f"{s['x1']:,.0f} img/s", "1.00x", ""),
        ("4 trainings sharing the GPU (0.25 of its memory each)", f"{s['x4']:,.0f} img/s", f"{s['x4'] / s['x1']:.2f}x",
         goal(s["x4"] / s["x1"] >= 1.5, ">= 1.5x")),
    ]  # fmt: skip
    lines = [
        f"# GPU speed ({'tiny, ' if tiny else ''}{r['images']:,} synthetic {r['side']}x{r['side']}x3 images, "
        f"{r['student']} student, {r['teacher']} teacher)",
        "",
        f"Machine: {r['machine']}.",
        "",
        "| measurement | value | ratio | goal |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "GPU memory still allocated after each run (MB; a leak grows it run after run):", ""]
    lines += [f"- {label}: {mb:.1f}" for label, mb in r["memory_mb"]]
    lines += [
        "",
        f"Training batch {r['batch']} for the single-training rows; each of the sharing runs trains "
        f"{r['images'] // 4:,} images at batch {r['share_batch']} (the sweeps' default) in its own process.",
        f"Wall time of the whole benchmark: {r['wall_s']:.0f} s.",
    ]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"speed-gpu{'-tiny' if tiny else ''}"
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2))
    print("\n".join(lines))
    print(f"\nwritten: {stem}.md, {stem}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small models and data, a few seconds a part: the CI setting")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for flag, kind in (
        ("--size", str),
        ("--concurrent", int),
        ("--rank", int),
        ("--fraction", float),
        ("--ready", str),
        ("--result", str),
    ):
        parser.add_argument(flag, type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
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
    data = synthetic(size["images"], size["val"], size["side"])
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    results = {"machine": f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__}", "device": args.device, **size}
    results["train"], results["memory_mb"] = measure_training(size, data, args.device)
    results["sharing"] = measure_sharing(size, args.device, size_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    profile_steps(size, data, args.device, out / f"profile-gpu{'-tiny' if args.tiny else ''}.txt")
    results["wall_s"] = time.perf_counter() - started
    write(results, out, args.tiny)


if __name__ == "__main__":
    main()

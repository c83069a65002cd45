"""What the student costs next to its teacher: parameters, bytes, FLOPs, CPU speed."""

from __future__ import annotations

import copy
import io
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the fp32 state dict as torch.save writes it."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one image, by torch's own flop counter (a multiply-add is 2)."""
    model = _cpu_eval_copy(model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops())


LATENCY_THREADS = 1  # batch-1 latency on one core: the same number on any machine's thread setting


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """What gets exported: fp32, contiguous (not channels-last, as a GPU run trains), on the CPU."""
    return copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()


def latency_ms(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Median batch-1 forward time on ``LATENCY_THREADS`` CPU threads, of the exported form."""
    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        return time_forward(_cpu_eval_copy(model), input_shape, batch=1) * 1e3
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def time_forward(model: nn.Module, input_shape: tuple[int, ...], batch: int, reps: int = 20, budget_s: float = 2.0) -> float:
    """Median seconds of a CPU forward pass at ``batch``, after one warm-up, within a time budget."""
    x = torch.randn(batch, *input_shape)
    model(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compression_report(
    student: nn.Module,
    teacher: nn.Module | None,
    input_shape: tuple[int, ...],
    student_acc: float | None = None,
    teacher_acc: float | None = None,
    measure_speed: bool = True,
) -> dict[str, float]:
    """Metrics named as they are logged: ``student/*``, ``teacher/*``, ``compression/*``, ``latency/*``."""
    out: dict[str, float] = {
        "student/params": count_params(student),
        "student/size_mb": state_dict_bytes(student) / 1e6,
        "student/flops": count_flops(student, input_shape),
    }
    if measure_speed:
        out["latency/cpu_ms"] = latency_ms(student, input_shape)
        out["throughput/cpu_img_s"] = 256 / time_forward(_cpu_eval_copy(student), input_shape, batch=256, reps=5)
    if teacher is not None:
        out["teacher/params"] = count_params(teacher)
        out["teacher/size_mb"] = state_dict_bytes(teacher) / 1e6
        out["teacher/flops"] = count_flops(teacher, input_shape)
        out["compression/ratio"] = out["teacher/params"] / out["student/params"]
        out["compression/size_ratio"] = out["teacher/size_mb"] / out["student/size_mb"]
        out["compression/flops_ratio"] = out["teacher/flops"] / max(out["student/flops"], 1)
        if measure_speed:
            out["latency/teacher_cpu_ms"] = latency_ms(teacher, input_shape)
            out["compression/speedup"] = out["latency/teacher_cpu_ms"] / out["latency/cpu_ms"]
    if student_acc is not None and teacher_acc is not None:
        out["accuracy/drop"] = teacher_acc - student_acc
    return out

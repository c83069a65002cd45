"""What a student costs next to its teacher: parameters, bytes, FLOPs, CPU speed."""

import pytest
import torch
from torch import nn

from kdsearch.models.compression import (
    LATENCY_THREADS,
    compression_report,
    count_flops,
    count_params,
    latency_ms,
    state_dict_bytes,
)


def test_compression_metrics_on_known_models():
    small, big = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Linear(8, 2))
    assert count_params(small) == 26 and count_params(big) == 122
    assert count_flops(small, (3, 2, 2)) == 2 * 12 * 2  # one multiply-add per weight counts as 2 FLOPs
    assert state_dict_bytes(big) > state_dict_bytes(small) > 26 * 4
    report = compression_report(small, big, (3, 2, 2), student_acc=0.9, teacher_acc=0.95)
    assert report["compression/ratio"] == pytest.approx(122 / 26)
    assert report["compression/flops_ratio"] == pytest.approx((2 * 12 * 8 + 2 * 8 * 2) / 48)
    assert report["accuracy/drop"] == pytest.approx(0.05)
    assert report["latency/cpu_ms"] > 0 and report["throughput/cpu_img_s"] > 0 and report["compression/speedup"] > 0


def test_latency_times_the_exported_form_on_a_fixed_thread_count():
    # A GPU run trains channels-last; what is exported (and timed) is the contiguous fp32 model,
    # on LATENCY_THREADS threads whatever the process uses.
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            seen.append((torch.get_num_threads(), self.conv.weight.is_contiguous(), self.conv.weight.dtype))
            return self.conv(x).mean(dim=(2, 3))

    model = Probe().to(memory_format=torch.channels_last).to(torch.bfloat16)
    assert not model.conv.weight.is_contiguous()
    torch.set_num_threads(2)
    latency_ms(model, (3, 8, 8))
    assert set(seen) == {(LATENCY_THREADS, True, torch.float32)} and torch.get_num_threads() == 2

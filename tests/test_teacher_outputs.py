"""The teacher-output cache gives the live teacher's outputs for exactly the views a student sees."""

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import file_behind

from kdsearch import TrainConfig, fit
from kdsearch.data import load_dataset
from kdsearch.data.pipeline import DeviceData
from kdsearch.methods.at import attention_map
from kdsearch.models import build_model
from kdsearch.teacher.outputs import compute_teacher_outputs, estimate_bytes
from kdsearch.teacher.weights import get_teacher

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_cached_outputs_equal_the_live_teacher_for_the_same_views(digits):
    torch.manual_seed(0)
    teacher = build_model("resnet20", 10, 1).eval()
    cache = compute_teacher_outputs(
        teacher, digits, seed=3, epochs=2, crop_pad=1, flip=True, attention=True, device=CPU, batch_size=200
    )
    assert cache.logits.shape == (2, len(digits.train_x), 10) and cache.logits.dtype == torch.float16
    train = DeviceData(digits.train_x, digits.train_y, digits.mean, digits.std, CPU, pad=1)
    for epoch in range(2):  # the batches the student gets: shuffled, augmented, with their image indices
        x, _, idx = next(iter(train.train_batches(64, seed=3, epoch=epoch, flip=True)))
        with torch.no_grad():
            logits, features = teacher.forward_with_features(x)
        looked_up = cache.epoch_on(epoch, idx.device).lookup(idx)
        cached_logits, cached_maps = looked_up.logits, looked_up.attention
        assert torch.allclose(cached_logits, logits, atol=2e-2, rtol=2e-3)  # fp16 storage
        for cached, f in zip(cached_maps, features):
            live = torch.nn.functional.normalize(attention_map(f).flatten(1), dim=1)
            assert torch.allclose(cached.flatten(1), live, atol=1e-3)
    assert cache.nbytes() == estimate_bytes(teacher, digits, 2, attention=True)


def test_fit_with_the_cache_trains_like_the_live_teacher(digits, cache_dir):
    cfg = TrainConfig(method="kd", epochs=2, teacher_epochs=2, teacher="resnet8", cache_dir=cache_dir, threads=2)
    teacher = get_teacher(cfg, digits)
    outputs = compute_teacher_outputs(
        teacher.model, digits, seed=cfg.seed, epochs=cfg.epochs, crop_pad=cfg.crop_pad, flip=cfg.flip, attention=False, device=CPU
    )
    logs, calls = [], []
    first_layer = next(m for m in teacher.model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_layer.register_forward_pre_hook(lambda *_: calls.append(1))  # the teacher's work, counted
    live = fit(cfg, data=digits, teacher=teacher, measure_speed=False, log=logs.append, evaluate_test=False)
    live_calls = len(calls)
    cached = fit(
        cfg, data=digits, teacher=teacher, teacher_outputs=outputs, measure_speed=False, log=logs.append, evaluate_test=False
    )
    hook.remove()
    assert "teacher outputs: computed live every step" in logs and "teacher outputs: looked up in the shared cache" in logs
    assert live_calls >= 2 * 20 and len(calls) == live_calls  # a forward a step live; the cached run never ran it
    # The live teacher's logits are rounded as the cache stores them: the two runs are the same run.
    assert [h["train/kd"] for h in cached.history] == [h["train/kd"] for h in live.history]
    assert cached.metrics["val/acc"] == live.metrics["val/acc"]
    # a cache for other views is not used
    logs.clear()
    other = fit(
        TrainConfig(**{**cfg.to_dict(), "seed": 1}),
        data=digits,
        teacher=teacher,
        teacher_outputs=outputs,
        measure_speed=False,
        log=logs.append,
    )
    assert (
        "teacher outputs: computed live every step (the cache has the views of seed 0, crop_pad 1, flip False; this run: seed 1, crop_pad 1, flip False)"
        in logs
    )
    alone = fit(TrainConfig(**{**cfg.to_dict(), "seed": 1}), data=digits, teacher=teacher, measure_speed=False)
    assert [h["train/kd"] for h in other.history] == [h["train/kd"] for h in alone.history]  # as if no cache were given
    assert other.metrics["val/acc"] == alone.metrics["val/acc"]


def test_outputs_for_other_images_or_another_teacher_are_not_used(digits, cache_dir):
    # Same seed, crops and epochs, but another training split, or another teacher: the lookup
    # would return other images' (or another teacher's) logits, so the run computes them live.
    cfg = TrainConfig(method="kd", epochs=1, teacher_epochs=1, teacher="resnet8", cache_dir=cache_dir, threads=2)
    teacher = get_teacher(cfg, digits)
    outputs = compute_teacher_outputs(
        teacher.model, digits, seed=cfg.seed, epochs=1, crop_pad=cfg.crop_pad, flip=cfg.flip, attention=False, device=CPU
    )
    subset = load_dataset("digits", train_subset=len(digits.train_x) - 10)
    other_split = load_dataset("digits", split_seed=1)
    assert subset.fingerprint() != digits.fingerprint() != other_split.fingerprint()
    assert load_dataset("digits").fingerprint() == digits.fingerprint()
    for data, who, why in (
        (subset, teacher, "the cache is of other training images"),
        (other_split, teacher, "the cache is of other training images"),
        (digits, get_teacher(dataclasses.replace(cfg, teacher_seed=1), digits), "the cache is of another teacher's weights"),
    ):
        logs = []
        fit(cfg, data=data, teacher=who, teacher_outputs=outputs, measure_speed=False, evaluate_test=False, log=logs.append)
        assert f"teacher outputs: computed live every step ({why})" in logs
    logs = []
    fit(cfg, data=digits, teacher=teacher, teacher_outputs=outputs, measure_speed=False, evaluate_test=False, log=logs.append)
    assert "teacher outputs: looked up in the shared cache" in logs
    # outputs computed under bf16 autocast (a GPU driver's) are not an fp32 run's teacher
    bf16 = dataclasses.replace(outputs, amp=True)
    logs = []
    fit(cfg, data=digits, teacher=teacher, teacher_outputs=bf16, measure_speed=False, evaluate_test=False, log=logs.append)
    assert "teacher outputs: computed live every step (the cache was computed under bf16, this run is fp32)" in logs
    # a cache shorter than the run
    logs = []
    two = dataclasses.replace(cfg, epochs=2)
    fit(two, data=digits, teacher=teacher, teacher_outputs=outputs, measure_speed=False, evaluate_test=False, log=logs.append)
    assert "teacher outputs: computed live every step (the cache covers 1 of this run's 2 epochs)" in logs


def test_at_uses_cached_attention_maps(digits, cache_dir):
    cfg = TrainConfig(method="at", epochs=1, teacher_epochs=1, teacher="resnet8", cache_dir=cache_dir, threads=2)
    teacher = get_teacher(cfg, digits)
    with_maps = compute_teacher_outputs(
        teacher.model, digits, seed=0, epochs=1, crop_pad=cfg.crop_pad, flip=cfg.flip, attention=True, device=CPU
    )
    logs = []
    live = fit(cfg, data=digits, teacher=teacher, measure_speed=False)
    cached = fit(cfg, data=digits, teacher=teacher, teacher_outputs=with_maps, measure_speed=False, log=logs.append)
    assert "teacher outputs: looked up in the shared cache" in logs
    assert cached.history[0]["train/at"] == pytest.approx(live.history[0]["train/at"], rel=2e-2)
    no_maps = compute_teacher_outputs(
        teacher.model, digits, seed=0, epochs=1, crop_pad=cfg.crop_pad, flip=cfg.flip, attention=False, device=CPU
    )
    logs.clear()
    fit(cfg, data=digits, teacher=teacher, teacher_outputs=no_maps, measure_speed=False, log=logs.append)
    assert "teacher outputs: computed live every step (the cache holds no attention maps and at reads them)" in logs


def test_outputs_over_the_memory_budget_are_written_once_and_every_trial_maps_the_same_files(digits, tmp_path, monkeypatch):
    import pickle
    import shutil as shutil_module

    from kdsearch.teacher import outputs as teacher_outputs
    from kdsearch.teacher.outputs import CacheLimits, compute_shared_outputs

    cfg = TrainConfig(method="at", epochs=2, teacher_epochs=1, teacher="resnet8", cache_dir=str(tmp_path), threads=2)
    teacher = get_teacher(cfg, digits)
    logs = []
    in_memory = compute_shared_outputs(teacher, digits, cfg, logs.append, CacheLimits(copies=3))
    assert not in_memory.mapped and "in memory" in logs[-1]
    # the budget is what the free memory holds beside the data's placement: data held in host
    # memory leaves less room (10 MB free, 7.5 MB usable, 7 MB of it the data's: 0.25 MB a copy)
    from kdsearch.data.placement import host_bytes

    monkeypatch.setattr(teacher_outputs, "free_host_memory", lambda: 10 * 1024**2)
    assert not compute_shared_outputs(teacher, digits, cfg, logs.append, CacheLimits(copies=2)).mapped
    beside = compute_shared_outputs(teacher, digits, cfg, logs.append, CacheLimits(copies=2, reserved=7 * 1024**2))
    assert (
        beside.mapped
        and "(0.46 MB, over the 0.25 MB they may take in memory (2 copies at once, beside the data's 7.00 MB" in logs[-1]
    )
    monkeypatch.undo()
    shutil_module.rmtree(tmp_path / "teacher-outputs")  # (written by that call: the next writes them anew)
    shared = len(digits.train_x) * 64 + len(digits.val_x) * 64  # 1x8x8 images
    padded = len(digits.train_x) * 100 + len(digits.val_x) * 64  # padded by 1: 10x10
    assert host_bytes("host", digits, 1, 4, "cpu") == shared and host_bytes("device", digits, 1, 4, "cpu") == 4 * padded + shared
    assert host_bytes("device", digits, 1, 4, "cuda") == host_bytes("stream", digits, 1, 4, "cpu") == 0
    monkeypatch.setenv("KDSEARCH_TEACHER_CACHE_GB", "0.0001")  # 0.1 MB: the logits and maps take 0.46 MB
    written = compute_shared_outputs(teacher, digits, cfg, logs.append, CacheLimits(copies=3))
    assert written.mapped and "(0.46 MB, over the 0.10 MB they may take in memory (3 copies at once" in logs[-1]
    folder = (tmp_path / "teacher-outputs").resolve()
    assert all(
        Path(file_behind(t) or "/").parent.parent == folder for t in [written.logits, *written.attention]
    )  # the kernel's word
    assert f"written to {tmp_path / 'teacher-outputs'}" in logs[-1] and "memory-mapped by every trial" in logs[-1]
    assert torch.equal(written.logits, in_memory.logits) and all(map(torch.equal, written.attention, in_memory.attention))
    # what a trial receives: the files' paths, not the outputs (an in-memory copy travels whole)
    sent = pickle.dumps(written)
    assert len(sent) < 5_000 < in_memory.nbytes() < len(pickle.dumps(in_memory))
    received = pickle.loads(sent)
    assert received.mapped and torch.equal(received.logits, in_memory.logits)
    assert Path(file_behind(received.logits) or "/").parent.parent == folder and file_behind(in_memory.logits) is None
    # the next sweep of the same data, teacher and views reads them instead of computing them again
    assert "read from" in (compute_shared_outputs(teacher, digits, cfg, logs.append, CacheLimits(copies=3)) and logs[-1])
    # a student trained on the mapped outputs is the one trained on the in-memory outputs
    runs = [
        fit(cfg, data=digits, teacher=teacher, teacher_outputs=o, measure_speed=False, evaluate_test=False)
        for o in (received, in_memory)
    ]
    assert [h["train/at"] for h in runs[0].history] == [h["train/at"] for h in runs[1].history]
    # no room on the disk either, or computed on another node: the trials run the teacher live, said
    full = shutil_module.disk_usage(tmp_path)._replace(free=400_000)
    monkeypatch.setattr(teacher_outputs.shutil, "disk_usage", lambda _: full)
    assert compute_shared_outputs(teacher, digits, cfg, logs.append, CacheLimits(copies=3)) is None
    assert (
        logs[-1].startswith("teacher outputs (logits, attention) would take 0.46 MB")
        and "and over the 0.29 MB free for them under" in logs[-1]
    )
    assert logs[-1].endswith(": trials run the teacher live")


@pytest.mark.slow
def test_the_trials_of_a_node_share_one_copy_of_the_outputs_in_memory(digits, local_ray):
    # What a trial receives through Ray's object store: numpy pages every trial of a node maps
    # read-only, not a copy each (a torch tensor in the object would be copied into every trial).
    import ray

    torch.manual_seed(0)
    teacher = build_model("resnet8", 10, 1).eval()
    outputs = compute_teacher_outputs(teacher, digits, seed=0, epochs=2, crop_pad=1, flip=False, attention=True, device=CPU)
    ref = ray.put(outputs)
    first, second = ray.get(ref), ray.get(ref)  # two trials of the node
    assert first.logits.data_ptr() == second.logits.data_ptr()
    assert [a.data_ptr() for a in first.attention] == [a.data_ptr() for a in second.attention]
    assert torch.equal(first.logits, outputs.logits) and all(map(torch.equal, first.attention, outputs.attention))

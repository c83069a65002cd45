"""fit() on real (tiny) data: it learns, reports through the callback, caches teachers."""

import dataclasses

import pytest
import torch
from conftest import write_celeba

from kdsearch import TrainConfig, fit
from kdsearch.data import load_dataset
from kdsearch.errors import UserError
from kdsearch.models.checkpoint import load_model
from kdsearch.teacher.weights import get_teacher, teacher_cache_path
from kdsearch.training.engine import TrainingDiverged

FAST = dict(dataset="digits", epochs=4, teacher_epochs=6, student="resnet8", teacher="resnet8", teacher_width=2.0, threads=2)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_kd_learns_digits_and_reports_every_epoch(digits, cache_dir):
    seen = []
    cfg = TrainConfig(method="kd", cache_dir=cache_dir, **FAST)
    result = fit(cfg, data=digits, on_epoch_end=lambda m, state: seen.append((m, state.student)), measure_speed=False)
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3, 4]
    assert all(model is result.student for _, model in seen)
    assert {"train/loss", "train/ce", "train/kd", "val/acc", "val/best_acc", "lr"} <= set(seen[0][0])
    assert result.metrics["val/acc"] > 0.8 and result.metrics["test/acc"] > 0.8
    assert result.metrics["compression/ratio"] == pytest.approx(
        result.metrics["teacher/params"] / result.metrics["student/params"]
    )
    assert 3.5 < result.metrics["compression/ratio"] < 4.5
    assert result.metrics["accuracy/drop"] == pytest.approx(result.metrics["teacher/test_acc"] - result.metrics["test/acc"])


def test_teacher_is_trained_once_then_loaded_from_cache(digits, cache_dir):
    cfg = TrainConfig(method="kd", cache_dir=cache_dir, **FAST)
    logs = []
    first = get_teacher(cfg, digits, log=logs.append)
    assert any("training teacher" in line for line in logs) and first.path == teacher_cache_path(cfg, digits)
    logs.clear()
    second = get_teacher(cfg, digits, log=logs.append)
    assert not any("training teacher" in line for line in logs) and any("from cache" in line for line in logs)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    assert second.metrics["test/acc"] == first.metrics["test/acc"]
    # another seed or architecture is another teacher
    assert teacher_cache_path(dataclasses.replace(cfg, teacher_seed=1), digits) != first.path


def test_a_teacher_is_identified_by_its_own_settings_not_the_students(digits):
    base = TrainConfig(method="kd", dataset="digits")
    student_only = dict(lr=0.2, batch_size=32, weight_decay=1e-3, optimizer="adamw", schedule="cosine", label_smoothing=0.1)
    student_only.update(epochs=3, seed=5, method_args={"alpha": 0.5}, student="resnet14")
    assert teacher_cache_path(dataclasses.replace(base, **student_only), digits) == teacher_cache_path(base, digits)
    for teacher_setting in (dict(teacher_lr=0.2), dict(teacher_batch_size=32), dict(teacher_epochs=3), dict(teacher="resnet14")):
        assert teacher_cache_path(dataclasses.replace(base, **teacher_setting), digits) != teacher_cache_path(base, digits)
    assert (base.teacher_lr, base.teacher_batch_size) == (0.05, 64)  # the dataset's presets, whatever the student's


def test_a_pinned_teacher_checkpoint_must_be_the_same_file(digits, cache_dir, tmp_path):
    cfg = TrainConfig(method="kd", cache_dir=cache_dir, **FAST)
    path = get_teacher(cfg, digits).path
    from kdsearch.teacher.weights import file_sha256

    pinned = dataclasses.replace(cfg, teacher_checkpoint=str(path), teacher_sha256=file_sha256(path))
    logs = []
    assert get_teacher(pinned, digits, log=logs.append).path == path
    other = get_teacher(dataclasses.replace(cfg, teacher_seed=1), digits).path
    with pytest.raises(UserError, match="is not the teacher this config names"):
        get_teacher(dataclasses.replace(pinned, teacher_checkpoint=str(other)), digits)


def test_at_between_different_families_and_dml_run(digits, cache_dir):
    at = fit(
        TrainConfig(
            method="at",
            method_args={"beta": 100.0},
            cache_dir=cache_dir,
            **{**FAST, "teacher": "resnet18", "teacher_width": 1.0, "epochs": 3, "teacher_epochs": 1},
        ),
        data=digits,
        measure_speed=False,
    )
    last = at.history[-1]  # the loss is CE plus beta/2 times the AT term (alpha 0): no term dropped or scaled
    assert last["train/at"] > 0 and last["train/loss"] == pytest.approx(last["train/ce"] + 50.0 * last["train/at"], rel=1e-5)
    assert at.metrics["val/acc"] > 0.5  # chance is 0.1; 0.66 at seed 0
    dml = fit(
        TrainConfig(method="dml", method_args={"num_peers": 3}, cache_dir=cache_dir, **FAST), data=digits, measure_speed=False
    )
    assert "train/mutual" in dml.history[-1] and dml.metrics["val/acc"] > 0.8


def test_same_seed_same_result(digits):
    cfg = TrainConfig(method="ce", **{**FAST, "epochs": 2})
    a = fit(cfg, data=digits, measure_speed=False)
    b = fit(cfg, data=digits, measure_speed=False)
    assert a.metrics["val/acc"] == b.metrics["val/acc"] and a.history[-1]["train/loss"] == b.history[-1]["train/loss"]


def test_resuming_from_a_saved_state_gives_the_uninterrupted_result(digits):
    cfg = TrainConfig(method="dml", **{**FAST, "epochs": 3})
    states = {}
    full = fit(cfg, data=digits, on_epoch_end=lambda m, s: states.setdefault(s.epoch, s.training_state()), measure_speed=False)
    saved = states[2]
    resumed = fit(cfg, data=digits, resume=saved, measure_speed=False)
    assert [h["epoch"] for h in resumed.history] == [3]
    assert resumed.history[-1]["train/loss"] == pytest.approx(full.history[-1]["train/loss"], rel=1e-5)
    assert resumed.metrics["val/acc"] == full.metrics["val/acc"]


def test_gpu_code_paths_bf16_and_channels_last_run_on_cpu(digits, cache_dir):
    # The GPU fast path (bf16 autocast, channels_last) is the same code; here it runs on the CPU.
    cfg = TrainConfig(
        method="kd", amp=True, channels_last=True, cache_dir=cache_dir, **{**FAST, "epochs": 2, "teacher_epochs": 1}
    )
    result = fit(cfg, data=digits, measure_speed=False)
    assert result.metrics["val/acc"] > 0.3
    assert next(result.student.parameters()).dtype == torch.float32  # weights stay fp32 under autocast


@pytest.mark.parametrize("method", ["kd", "dml"])
def test_compile_wraps_the_forward_passes_and_trains_the_same_model(digits, cache_dir, monkeypatch, method):
    # compile=True puts the student's and the live teacher's forward (and DML's peers) through
    # torch.compile. Dynamo's eager backend runs the same kernels without a C++ toolchain, so the
    # compiled run must give the uncompiled run's model.
    wrapped = []
    real = torch.compile

    def spy(fn=None, **kwargs):
        wrapped.append(getattr(fn, "__qualname__", type(fn).__name__))
        return real(fn, backend="eager")

    cfg = TrainConfig(method=method, cache_dir=cache_dir, **{**FAST, "epochs": 1})
    eager = fit(cfg, data=digits, measure_speed=False, evaluate_test=False)
    monkeypatch.setattr(torch, "compile", spy)
    compiled = fit(dataclasses.replace(cfg, compile=True), data=digits, measure_speed=False, evaluate_test=False)
    expected = {"kd": ["OwnFeatures.__call__"] * 2, "dml": ["OwnFeatures.__call__", "Module._call_impl"]}[method]
    assert sorted(wrapped) == sorted(expected)
    assert compiled.metrics["val/acc"] == pytest.approx(eager.metrics["val/acc"], abs=0.01)
    for name, value in eager.student.state_dict().items():
        torch.testing.assert_close(compiled.student.state_dict()[name], value, atol=1e-3, rtol=1e-3)


def test_divergence_is_reported_not_hidden(digits):
    with pytest.raises(TrainingDiverged, match="lower lr"):
        fit(TrainConfig(method="ce", lr=1e12, **{**FAST, "epochs": 2}), data=digits, measure_speed=False)


def test_multilabel_celeba_fit_reports_attribute_metrics(tmp_path, cache_dir):
    write_celeba(tmp_path, n=40)
    cfg = TrainConfig(
        method="kd",
        dataset="celeba",
        data_dir=str(tmp_path),
        image_size=16,
        student="resnet8",
        teacher="resnet8",
        epochs=2,
        teacher_epochs=2,
        batch_size=16,
        cache_dir=cache_dir,
        threads=2,
    )
    result = fit(cfg, measure_speed=False)
    assert {"val/acc", "val/balanced_acc", "val/macro_f1", "test/acc", "test/macro_f1"} <= set(result.metrics)
    assert 0.0 <= result.metrics["test/balanced_acc"] <= 1.0


def test_student_checkpoint_describes_itself(digits, tmp_path):
    result = fit(TrainConfig(method="ce", **{**FAST, "epochs": 1}), data=digits, measure_speed=False)
    path = result.save(tmp_path / "student.pt")
    model, payload = load_model(path)
    assert payload["model"]["arch"] == "resnet8" and payload["dataset"]["class_names"] == [str(d) for d in range(10)]
    assert payload["dataset"]["mean"] == list(digits.mean) and payload["config"]["method"] == "ce"
    assert payload["metrics"]["test/acc"] == result.metrics["test/acc"]
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(model.eval()(x), result.student.eval().cpu()(x), atol=1e-6)


def test_teacher_checkpoint_for_another_dataset_is_refused(digits, tmp_path):
    other = fit(TrainConfig(method="ce", **{**FAST, "epochs": 1}), data=digits, measure_speed=False)
    other.spec = {**other.spec, "num_outputs": 10}
    path = other.save(tmp_path / "t.pt")
    cifar_like = dataclasses.replace(digits, class_names=[str(i) for i in range(100)])
    cfg = TrainConfig(method="kd", teacher_checkpoint=str(path), **FAST)
    with pytest.raises(UserError, match="has 10 outputs .* but digits has 100 classes"):
        get_teacher(cfg, cifar_like)


def test_batch_size_one_is_refused_with_the_reason():
    with pytest.raises(UserError, match="batch_size must be at least 2 \\(batch norm"):
        TrainConfig(method="ce", batch_size=1)


def test_a_method_setting_that_does_not_fit_the_models_is_one_line(digits, cache_dir):
    # AT's stage weights are checked when the maps meet; the engine turns the method's ValueError into a UserError.
    cfg = TrainConfig(
        method="at", method_args={"weights": [1.0, 1.0]}, cache_dir=cache_dir, **{**FAST, "epochs": 1, "teacher_epochs": 1}
    )
    with pytest.raises(UserError, match="method 'at': AT has 2 stage weights"):
        fit(cfg, data=digits, measure_speed=False)


def test_validation_and_test_losses_leave_label_smoothing_out(digits):
    # val/loss is the plain loss: recomputed by hand on the trained student, with no smoothing.
    from kdsearch.data.pipeline import DeviceData
    from kdsearch.training.evaluate import predict

    result = fit(TrainConfig(method="ce", label_smoothing=0.3, **{**FAST, "epochs": 1}), data=digits, measure_speed=False)
    logits = predict(result.student, DeviceData(digits.val_x, digits.val_y, digits.mean, digits.std, torch.device("cpu")), 64)
    assert result.metrics["val/loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, digits.val_y).item(), rel=1e-4)


def test_the_engine_needs_its_teacher_passed_in(digits):
    from kdsearch.training import engine as train

    with pytest.raises(UserError, match="method 'kd' needs a teacher"):
        train.train_student(TrainConfig(method="kd", **FAST), digits)


def test_gpu_memory_is_read_on_cuda_only_and_the_peak_resets(monkeypatch):
    from kdsearch.runtime.device import gpu_memory_mb

    assert gpu_memory_mb(torch.device("cpu")) == {}
    peak = {"value": 3 * 2**20}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peak["value"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: peak.update(value=2**20))
    cuda = torch.device("cuda", 0)
    assert gpu_memory_mb(cuda, reset_peak=True) == {"gpu/allocated_mb": 1.0, "gpu/peak_mb": 3.0}
    assert gpu_memory_mb(cuda) == {"gpu/allocated_mb": 1.0, "gpu/peak_mb": 1.0}


def test_checkpoints_record_the_split_and_a_teacher_from_another_split_is_refused(tmp_path):
    """A teacher trained under another split_seed/val_fraction may have trained on this run's
    held-out images: refused, naming the flags that give its split; the same split is taken."""
    from conftest import write_image_folder

    write_image_folder(tmp_path / "data", per_class=15)
    base = dict(dataset="imagefolder", data_dir=str(tmp_path / "data"), image_size=8, epochs=1, threads=2, teacher="resnet8")
    teacher = fit(TrainConfig(method="ce", split_seed=3, **base), measure_speed=False).save(tmp_path / "teacher.pt")
    split = load_model(teacher)[1]["dataset"]["split"]
    assert split == {"val_fraction": 0.1, "split_seed": 3, "val": "held out by split_seed", "test": "held out by split_seed"}
    cfg = TrainConfig(method="kd", teacher_checkpoint=str(teacher), **base)
    with pytest.raises(UserError) as err:
        fit(cfg, measure_speed=False)
    assert str(err.value) == (
        f"teacher checkpoint {teacher} was trained with split_seed=3 but this run uses split_seed=0: it may have trained "
        "on this run's test images; pass --split-seed 3 (or train the teacher under this split)"
    )
    assert fit(dataclasses.replace(cfg, split_seed=3), measure_speed=False).metrics["val/acc"] >= 0

    digits = load_dataset("digits")  # its own test split: only validation is at stake
    assert digits.split["test"] == "the dataset's own" and digits.split["val"] == "held out by split_seed"
    ce = fit(TrainConfig(method="ce", **{**FAST, "epochs": 1, "val_fraction": 0.2}), measure_speed=False)
    expected = (
        "was trained with val_fraction=0.2 but this run uses val_fraction=0.1: it may have trained on this run's "
        "validation images; pass --val-fraction 0.2"
    )
    with pytest.raises(UserError, match=expected):
        get_teacher(TrainConfig(method="kd", teacher_checkpoint=str(ce.save(tmp_path / "d.pt")), **FAST), digits)

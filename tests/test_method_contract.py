"""One set of checks over every registered method, as Optuna runs one set of tests over every
sampler: a method gets all of this by being registered in ``kdsearch.methods.METHODS``."""

import io
import typing
from contextlib import redirect_stdout

import pytest
import torch
import yaml

from kdsearch import TrainConfig
from kdsearch.cli import main
from kdsearch.data import load_dataset
from kdsearch.errors import UserError
from kdsearch.methods import METHODS, TaskLoss, build_method, method_class, method_settings
from kdsearch.models import build_model
from kdsearch.models.checkpoint import load_model
from kdsearch.teacher.outputs import compute_shared_outputs
from kdsearch.teacher.weights import Teacher
from kdsearch.training.engine import train_student

NAMES = sorted(METHODS)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = build_model("resnet14", 10, 1, width=1.5).eval()  # untrained: what it teaches is beside the point
    return Teacher(model, "resnet14", {"val/acc": 0.1, "test/acc": 0.1}, None, None)


# CRD with 255 negatives a sample, not the 1,292 of its default on digits: the contract is the
# same, each of its tests a few seconds shorter.
QUICK = {"crd": {"negatives": 255}}


def _config(name: str, epochs: int = 1) -> TrainConfig:
    return TrainConfig(
        method=name,
        method_args=QUICK.get(name, {}),
        dataset="digits",
        student="resnet8",
        epochs=epochs,
        batch_size=128,
        threads=2,
        seed=0,
        crop_pad=1,
    )


def _train(cfg, data, teacher, **kwargs):
    logs = []
    result = train_student(cfg, data, teacher, measure_speed=False, evaluate_test=False, log=logs.append, **kwargs)
    return result, logs


@pytest.mark.parametrize("name", NAMES)
def test_a_method_trains_alike_from_the_live_teacher_and_from_the_shared_outputs(name, digits, teacher):
    cfg = _config(name)
    reads = method_class(name).reads_for(cfg.method_args)
    live, live_logs = _train(cfg, digits, teacher)
    outputs = compute_shared_outputs(teacher, digits, cfg, lambda _: None)
    cached, cached_logs = _train(cfg, digits, teacher, teacher_outputs=outputs)
    if reads.needs_teacher:
        assert "teacher outputs: computed live every step" in live_logs
        assert "teacher outputs: looked up in the shared cache" in cached_logs, cached_logs
        for read in ("embedding", "features"):
            assert (getattr(outputs, read) is not None) == (read in reads.teacher)
    else:  # a method without a teacher neither runs one nor looks its outputs up
        assert not [line for line in live_logs + cached_logs if line.startswith("teacher outputs")]
    terms = [k for k in live.history[0] if k.startswith("train/")]
    assert terms and terms == [k for k in cached.history[0] if k.startswith("train/")]
    for k in terms:
        assert cached.history[0][k] == pytest.approx(live.history[0][k], rel=2e-3, abs=1e-5), k


@pytest.mark.parametrize("name", NAMES)
def test_a_method_resumes_from_its_checkpoint_as_if_never_stopped_and_exports_the_student_alone(name, digits, teacher, tmp_path):
    cfg = _config(name, epochs=2)
    states = []
    whole, _ = _train(cfg, digits, teacher, on_epoch_end=lambda m, state: states.append(state.training_state()))
    resumed, logs = _train(cfg, digits, teacher, resume=states[0])
    assert "resuming after epoch 1" in logs
    for (key, a), b in zip(whole.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), f"{key} differs after a resume"
    # every module the method trains is in the checkpoint (and restored above) ...
    method_state = states[0]["method"]
    trained = build_method(name, cfg.method_args, objective=TaskLoss(), make_peer=lambda: build_model("resnet8", 10, 1))
    own = {k for k in method_state if not k.startswith("objective")}
    assert own >= {k for k, _ in trained.named_parameters()} - {k for k in own if k.startswith("peers")}
    # ... and none of them in what is exported: the student's architecture, its parameters alone
    path = whole.save(tmp_path / "student.pt")
    model, _ = load_model(path)
    plain = build_model("resnet8", 10, 1)
    assert list(model.state_dict()) == list(plain.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_a_methods_settings_are_listed_printed_and_refused_in_one_line_when_bad(name, capsys):
    settings = method_settings(name)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    listed = capsys.readouterr().out
    assert f"  {name} " in listed
    for key, default in settings.items():
        assert f"{key}={default}" in listed
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["train", "--method", name, "--print-config"]) == 0
    printed = yaml.safe_load(out.getvalue())
    assert printed["method"] == name
    hints = typing.get_type_hints(method_class(name).__init__)
    for key in settings:
        if hints.get(key) is float:  # NaN fails every range a setting has
            with pytest.raises(UserError, match=key) as bad:  # (DID NOT RAISE: the setting has no range check)
                build_method(name, {key: float("nan")}, objective=TaskLoss(), make_peer=torch.nn.Identity)
            assert "\n" not in str(bad.value) and name in str(bad.value) and key in str(bad.value)


@pytest.mark.parametrize("name", [n for n in NAMES if method_class(n).reads.index])
def test_a_method_reading_sample_indices_trains_alike_on_streamed_data(name, digits, teacher, tmp_path):
    """The indices come from the data pipeline, augmented views and all, wherever the data lives:
    streamed from disk, a run updates the same memory rows with the same embeddings as in memory."""
    import dataclasses

    cfg = dataclasses.replace(_config(name, epochs=2), flip=True, cache_dir=str(tmp_path))
    in_memory, _ = _train(cfg, digits, teacher)
    streamed, logs = _train(dataclasses.replace(cfg, data_placement="stream"), digits, teacher)
    assert any(line.startswith("data placement: stream") for line in logs), logs
    for a, b in zip(in_memory.history, streamed.history):
        assert b[f"train/{name}"] == pytest.approx(a[f"train/{name}"], rel=1e-4)

"""Method settings that follow a schedule over training (kdsearch.settings.schedules)."""

import math

import pytest
import torch

from kdsearch import TrainConfig, fit
from kdsearch.data import load_dataset
from kdsearch.errors import UserError
from kdsearch.settings.schedules import check_schedule, value_at
from kdsearch.teacher.outputs import compute_teacher_outputs
from kdsearch.teacher.weights import get_teacher


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_each_shape_gives_its_values_from_the_share_of_training_done():
    def at(spec, p, epochs=10):
        return value_at(check_schedule(spec, "t"), p, epochs)

    assert [at({"schedule": "constant", "value": 4}, p) for p in (0, 0.5, 1)] == [4, 4, 4]
    assert [at({"schedule": "linear", "start": 0.9, "end": 0.1}, p) for p in (0, 0.5, 1)] == pytest.approx([0.9, 0.5, 0.1])
    assert [at({"schedule": "cosine", "start": 8, "end": 2}, p) for p in (0, 0.5, 1)] == pytest.approx([8, 5, 2])
    assert at({"schedule": "cosine", "start": 8, "end": 2}, 0.25) == pytest.approx(2 + 6 * (1 + math.cos(math.pi / 4)) / 2)
    assert [at({"schedule": "exponential", "start": 8, "end": 2}, p) for p in (0, 0.5, 1)] == pytest.approx([8, 4, 2])
    step = {"schedule": "step", "values": [0, 1, 2], "at": [0.3, 0.6]}
    assert [at(step, p) for p in (0, 0.2999, 0.3, 0.59, 0.6, 1)] == [0, 0, 1, 1, 2, 2]
    warm = {"schedule": "warmup", "epochs": 2, "value": 1000}  # 2 of 10 epochs: up over the first 20%
    assert [at(warm, p) for p in (0, 0.1, 0.2, 0.7)] == pytest.approx([0, 500, 1000, 1000])
    assert at(warm, 0.5, epochs=2) == pytest.approx(500)  # a warmup longer than the run: up over all of it


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"schedule": "wavy"}, "unknown schedule 'wavy'; choose one of constant, linear"),
        ({"schedule": "linear", "start": 1}, "a linear schedule takes start, end, got start"),
        ({"schedule": "step", "values": [0, 1], "at": [0.3, 0.6]}, "one value more than at"),
        ({"schedule": "step", "values": [0, 1, 2], "at": [0.6, 0.3]}, "rising shares of training in (0, 1)"),
        ({"schedule": "exponential", "start": 0, "end": 1}, "needs start and end > 0"),
        ({"schedule": "linear", "start": "a", "end": 1}, "t.start must be a number, got 'a'"),
    ],
)
def test_a_malformed_schedule_is_one_line(spec, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_schedule(spec, "t")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            {"alpha": {"schedule": "linear", "start": 0.9, "end": -0.2}},
            r"leaves the valid range at \d+% of training \(alpha -0.0",
        ),
        (
            {"temperature": {"schedule": "step", "values": [4, 0], "at": [0.5]}},
            "at 50% of training .temperature 0.0.: temperature must be > 0",
        ),
    ],
)
def test_a_schedule_that_leaves_its_settings_range_is_refused_before_anything_trains(args, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(method="kd", dataset="digits", method_args=args).method_args and __import__("kdsearch.api").api.fit(
            TrainConfig(method="kd", dataset="digits", method_args=args, cache_dir="/nonexistent")
        )


def test_only_settings_the_loss_reads_each_step_can_follow_a_schedule():
    from kdsearch.methods import check_method

    with pytest.raises(UserError, match="method 'at': p cannot follow a schedule"):
        check_method("at", {"p": {"schedule": "linear", "start": 2, "end": 1}}, 5)


def test_a_scheduled_setting_moves_every_step_and_is_logged_every_epoch(digits, cache_dir):
    """alpha from 1 to 0 over 4 epochs: each epoch logs its value at the epoch's last step (epoch 4
    ends on pure cross-entropy)."""
    sched = {"schedule": "linear", "start": 1.0, "end": 0.0}
    cfg = TrainConfig(method="kd", epochs=4, teacher_epochs=2, cache_dir=cache_dir, threads=2, method_args={"alpha": sched})
    assert cfg.method_args["alpha"] == sched and cfg.method_args["temperature"] == 4.0
    result = fit(cfg, data=digits, measure_speed=False)
    from kdsearch.data.pipeline import DeviceData

    steps = DeviceData(digits.train_x, digits.train_y, digits.mean, digits.std, torch.device("cpu")).num_batches(cfg.batch_size)
    total = 4 * steps
    expected = [1 - ((e + 1) * steps - 1) / (total - 1) for e in range(4)]
    assert [h["schedule/alpha"] for h in result.history] == pytest.approx(expected)
    assert result.history[-1]["schedule/alpha"] == 0.0


def test_a_scheduled_temperature_trains_from_the_cache_as_with_the_live_teacher(digits, cache_dir):
    """Cached logits do not depend on the temperature or the weights: a scheduled temperature
    looked up in the shared cache is the same run as with the live teacher, epoch by epoch."""
    temperature = {"schedule": "cosine", "start": 8.0, "end": 1.0}
    cfg = TrainConfig(
        method="kd", epochs=3, teacher_epochs=2, teacher="resnet8", cache_dir=cache_dir, threads=2,
        method_args={"temperature": temperature, "alpha": {"schedule": "warmup", "epochs": 1, "value": 0.9}},
    )  # fmt: skip
    teacher = get_teacher(cfg, digits)
    outputs = compute_teacher_outputs(
        teacher.model, digits, seed=cfg.seed, epochs=cfg.epochs, crop_pad=cfg.crop_pad, flip=cfg.flip, attention=False,
        device=torch.device("cpu"),
    )  # fmt: skip
    logs = []
    live = fit(cfg, data=digits, teacher=teacher, measure_speed=False, log=logs.append)
    cached = fit(cfg, data=digits, teacher=teacher, teacher_outputs=outputs, measure_speed=False, log=logs.append)
    assert "teacher outputs: looked up in the shared cache" in logs
    assert [h["train/kd"] for h in cached.history] == [h["train/kd"] for h in live.history]
    assert [h["val/acc"] for h in cached.history] == [h["val/acc"] for h in live.history]
    assert [h["schedule/temperature"] for h in live.history][-1] == pytest.approx(1.0)


def test_per_stage_weights_and_dml_weights_take_schedules(digits, cache_dir):
    weights = [{"schedule": "step", "values": [0, 1], "at": [0.5]}, 1.0, 1.0]
    cfg = TrainConfig(method="at", epochs=2, teacher_epochs=2, cache_dir=cache_dir, threads=2, method_args={"weights": weights})
    result = fit(cfg, data=digits, measure_speed=False)
    assert [h["schedule/weights.0"] for h in result.history] == [0.0, 1.0]
    assert [h["schedule/weights.1"] for h in result.history] == [1.0, 1.0]
    dml = TrainConfig(
        method="dml", epochs=2, cache_dir=cache_dir, threads=2,
        method_args={"weight": {"schedule": "linear", "start": 0.0, "end": 1.0}},
    )  # fmt: skip
    assert [h["schedule/weight"] for h in fit(dml, data=digits, measure_speed=False).history] == pytest.approx(
        [0.5, 1.0], abs=0.06
    )


def test_the_command_line_takes_a_schedule_and_prints_it_as_written(capsys):
    import yaml

    from kdsearch.cli import main

    assert main(["train", "--method", "kd", "--set", "alpha={schedule: linear, start: 0.9, end: 0.1}", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method_args"]["alpha"] == {"schedule": "linear", "start": 0.9, "end": 0.1}


def test_the_loss_uses_the_scheduled_value_at_each_step(digits, cache_dir):
    """A step schedule that holds alpha at 0.9 is the constant run exactly; one that drops it to 0
    halfway is that run in its first epoch and trains on cross-entropy alone in its second."""

    def run(alpha):
        cfg = TrainConfig(method="kd", epochs=2, teacher_epochs=2, cache_dir=cache_dir, threads=2, method_args={"alpha": alpha})
        return fit(cfg, data=digits, measure_speed=False).history

    constant = run(0.9)
    held = run({"schedule": "step", "values": [0.9, 0.9], "at": [0.5]})
    dropped = run({"schedule": "step", "values": [0.9, 0.0], "at": [0.5]})
    assert [h["train/loss"] for h in held] == [h["train/loss"] for h in constant]
    assert dropped[0]["train/loss"] == constant[0]["train/loss"]
    assert dropped[1]["train/loss"] == pytest.approx(dropped[1]["train/ce"], rel=1e-5)


def test_a_schedule_moves_within_an_epoch_not_only_between_epochs(digits, cache_dir):
    """alpha from 1 to 0 over a one-epoch run: evaluated at every step, the epoch's loss mixes
    the KD and CE terms and its last step is pure CE (logged alpha 0); evaluated once per epoch,
    alpha would stay 1 and the loss would be the KD term alone."""
    sched = {"schedule": "linear", "start": 1.0, "end": 0.0}
    cfg = TrainConfig(method="kd", epochs=1, teacher_epochs=2, cache_dir=cache_dir, threads=2, method_args={"alpha": sched})
    (epoch,) = fit(cfg, data=digits, measure_speed=False).history
    assert epoch["schedule/alpha"] == 0.0
    kd, ce, loss = epoch["train/kd"], epoch["train/ce"], epoch["train/loss"]
    assert abs(loss - kd) > 0.1 * abs(ce - kd), (loss, kd, ce)


def test_a_resumed_run_follows_the_schedule_where_it_left_off(digits):
    """The schedule is read from the epoch and step, not from a counter kept in memory: a run
    resumed after its second epoch gives the uninterrupted run's values and result."""
    cfg = TrainConfig(
        method="dml",
        dataset="digits",
        epochs=3,
        threads=2,
        method_args={"weight": {"schedule": "cosine", "start": 0.0, "end": 2.0}},
    )
    states = {}
    full = fit(cfg, data=digits, on_epoch_end=lambda m, s: states.setdefault(s.epoch, s.training_state()), measure_speed=False)
    resumed = fit(cfg, data=digits, resume=states[2], measure_speed=False)
    assert [h["schedule/weight"] for h in resumed.history] == [h["schedule/weight"] for h in full.history][2:]
    assert resumed.history[-1]["train/loss"] == pytest.approx(full.history[-1]["train/loss"], rel=1e-5)

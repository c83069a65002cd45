"""TrainConfig: presets applied when a config is built, types checked, one source of help for the CLI."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from kdsearch.config import DATASET_DEFAULTS, TrainConfig
from kdsearch.errors import UserError


def test_a_config_is_complete_when_built():
    cfg = TrainConfig(method="kd", dataset="fashion_mnist")
    preset = DATASET_DEFAULTS["fashion_mnist"]
    assert (cfg.student, cfg.teacher, cfg.epochs, cfg.batch_size, cfg.lr) == tuple(
        preset[k] for k in ("student", "teacher", "epochs", "batch_size", "lr")
    )
    assert (cfg.teacher_lr, cfg.teacher_batch_size) == (preset["lr"], preset["batch_size"])
    assert TrainConfig(dataset="digits", epochs=3).epochs == 3  # a given value wins over the preset


def test_a_config_round_trips_through_a_dict_and_yaml(tmp_path):
    cfg = TrainConfig(method="at", dataset="digits", method_args={"beta": 100.0}, lr=0.02)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert TrainConfig.from_yaml(path) == cfg == TrainConfig.from_dict(cfg.to_dict())


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lrr": 0.1}, "unknown key 'lrr'; valid keys are"),
        ({"epochs": "ten"}, "epochs must be an integer, got 'ten'"),
        ({"lr": "abc"}, "lr must be a number, got 'abc'"),
        ({"schedule": "step"}, "unknown schedule 'step': choose one of onecycle, cosine, constant"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"teacher_batch_size": 1}, "teacher_batch_size must be at least 2"),
        ({"warmup": 1.5}, "warmup is a share of the training steps in [0, 1)"),
        ({"val_fraction": 1.0}, "val_fraction must be between 0 and 1"),
    ],
)
def test_bad_settings_are_one_line_errors(values, message):
    with pytest.raises(UserError) as err:
        TrainConfig.from_dict(values, source="run.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_field_carries_its_help_and_the_cli_shows_it_with_choices_and_defaults():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"
    text = subprocess.run([sys.executable, "-m", "kdsearch", "train", "--help"], capture_output=True, text=True).stdout
    text = " ".join(text.split())  # argparse wraps lines
    assert "--schedule SCHEDULE" in text and "(onecycle, cosine, constant)" in text and "(default onecycle)" in text


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path):
    (tmp_path / "run.yaml").write_text("method: ce\ndataset: fashion_mnist\nepochs: 2\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdsearch",
            "train",
            "--config",
            str(tmp_path / "run.yaml"),
            "--dataset",
            "digits",
            "--print-config",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stderr == ""
    shown = yaml.safe_load(proc.stdout)
    # The flag changes the dataset, and the presets follow it (the file's dataset does not leak its presets).
    assert shown["dataset"] == "digits" and shown["epochs"] == 2 and shown["lr"] == DATASET_DEFAULTS["digits"]["lr"]
    assert TrainConfig.from_dict(shown) == TrainConfig(method="ce", dataset="digits", epochs=2)

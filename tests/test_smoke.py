"""`kdsearch sweep --smoke` says whether the set-up learns, and fails when nothing does."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import write_fashion_mnist

from kdsearch.data import load_dataset
from kdsearch.errors import UserError
from kdsearch.sweeper.smoke import chance_accuracy, smoke_check

ROOT = Path(__file__).resolve().parent.parent


def test_chance_is_the_most_frequent_class_or_attribute_value():
    digits = load_dataset("digits")
    assert 0.09 < chance_accuracy(digits) < 0.12
    attrs = SimpleNamespace(multilabel=True, train_y=torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]]))
    assert chance_accuracy(attrs) == pytest.approx((0.75 + 0.75) / 2)


def test_the_verdict_names_who_did_not_learn():
    digits = load_dataset("digits")
    teacher = SimpleNamespace(metrics={"val/acc": 0.9})
    ok = smoke_check(digits, teacher, {"val/acc": 0.7})
    assert ok.startswith("smoke check: teacher val/acc 0.900, best student val/acc 0.700") and ok.endswith("the set-up learns")
    with pytest.raises(UserError, match="not above chance .* for the teacher and the best student: nothing learns"):
        smoke_check(digits, SimpleNamespace(metrics={"val/acc": 0.11}), {"val/acc": 0.1})
    with pytest.raises(UserError, match="for the best student: nothing learns"):
        smoke_check(digits, None, {"val/acc": 0.12})


@pytest.mark.slow
def test_smoke_on_data_with_random_labels_fails_in_one_line(tmp_path):
    write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=40)  # random pixels and labels: nothing can be learned
    proc = subprocess.run(
        [sys.executable, "-m", "kdsearch", "sweep", "search_spaces/fashion_mnist-kd.yaml", "--smoke", "--quiet",
         "--data-dir", str(tmp_path / "fm"), "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "teacher=resnet8",
         "--storage", str(tmp_path / "s"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = [x for x in proc.stderr.strip().splitlines() if x.startswith("kdsearch: error")]
    assert line.startswith("kdsearch: error: smoke check: teacher val/acc") and "nothing learns" in line

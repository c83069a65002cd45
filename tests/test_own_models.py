"""The user's own models and teachers: import paths, features by name, pretrained and file teachers."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

from kdsearch import TrainConfig, UserError, fit
from kdsearch.api import load_data
from kdsearch.delivery.export import export_student, load_student
from kdsearch.models import build_model
from kdsearch.models.checkpoint import load_model
from kdsearch.teacher.weights import get_teacher, teacher_cache_path

FAST = dict(dataset="digits", epochs=2, teacher_epochs=2, threads=2)

MYNETS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Not a kdsearch model: no forward_with_features, no num_classes default."""

    def __init__(self, num_classes, in_channels, width=8):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        return self.head(x.mean(dim=(2, 3)))


def make_tiny(num_classes, in_channels, width=8):
    return TinyNet(num_classes, in_channels, width)


def no_module(num_classes):
    return "not a model"
'''


@pytest.fixture
def mynets(tmp_path, monkeypatch):
    """A module the user wrote in their folder, not installed."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "mynets.py").write_text(textwrap.dedent(MYNETS))
    monkeypatch.syspath_prepend(str(folder))
    yield folder


@pytest.fixture(scope="module")
def digits():
    return load_data(TrainConfig(**FAST))


def test_an_import_path_student_trains_exports_and_loads_back(mynets, digits, cache_dir, tmp_path):
    cfg = TrainConfig(
        method="ce", student="mynets:TinyNet", student_args={"width": 6}, cache_dir=cache_dir, **{**FAST, "epochs": 5, "lr": 0.1}
    )
    result = fit(cfg, data=digits)
    assert type(result.student).__name__ == "TinyNet" and result.student.conv1[0].out_channels == 6
    assert result.metrics["val/acc"] > 0.3  # chance is 0.1: it learns
    checkpoint = result.save(tmp_path / "student.pt")
    # the checkpoint records the import path and its arguments; the state dict is the user's own
    _, payload = load_model(checkpoint)
    assert payload["model"]["arch"] == "mynets:TinyNet" and payload["model"]["args"] == {"width": 6}
    assert set(payload["state_dict"]) == set(result.student.state_dict())
    report = export_student(checkpoint, ["safetensors", "onnx"], tmp_path / "export")
    assert set(report["formats"]) == {"safetensors", "onnx"}
    loaded = load_student(tmp_path / "export")
    assert type(loaded).__name__ == "TinyNet" and loaded.kdsearch_card["architecture"]["arch"] == "mynets:TinyNet"


def test_a_factory_function_and_dml_peers_build_from_the_path(mynets, digits, cache_dir):
    result = fit(
        TrainConfig(method="dml", student="mynets:make_tiny", student_args={"width": 4}, cache_dir=cache_dir, **FAST),
        data=digits,
        measure_speed=False,
        evaluate_test=False,
    )
    assert type(result.student).__name__ == "TinyNet"


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "nonexistent_mod:Net",
            "cannot import 'nonexistent_mod' (for nonexistent_mod:Net): put nonexistent_mod.py in the current folder",
        ),
        (
            "notinstalledpkg.models:resnet10t",
            "cannot import 'notinstalledpkg.models' (for notinstalledpkg.models:resnet10t): no package "
            "'notinstalledpkg' is installed: pip install notinstalledpkg",
        ),
        (
            "mynets_dep:Net",
            "importing mynets_dep (for mynets_dep:Net) failed: it needs 'missingdep', which is not installed: pip install missingdep",
        ),
        ("mynets:Missing", "mynets has no 'Missing' (for mynets:Missing): it defines TinyNet, make_tiny, no_module"),
        ("mynets:no_module", "mynets:no_module returned a str, not a torch.nn.Module"),
        ("mynets:", "'mynets:' is not an import path: write module:Name"),
        ("vgg", "unknown architecture 'vgg'"),
    ],
)
def test_a_model_that_cannot_be_built_is_one_line(mynets, name, message):
    (mynets / "mynets_dep.py").write_text("import missingdep\n")
    with pytest.raises(UserError) as err:
        build_model(name, 10, 1)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_attention_transfer_reads_the_named_modules_of_any_model(mynets, digits, cache_dir):
    logs = []
    cfg = TrainConfig(
        method="at",
        student="mynets:TinyNet",
        teacher="mynets:TinyNet",
        teacher_args={"width": 12},
        features={"student": ["conv1", "conv2"], "teacher": ["conv1", "conv2"]},
        cache_dir=cache_dir,
        **FAST,
    )
    result = fit(cfg, data=digits, log=logs.append, measure_speed=False)
    assert any("AT pairs: teacher stage 1 (12x8x8) <-> student stage 1 (8x8x8)" in line for line in logs), logs
    last, beta = result.history[-1], result.config.method_args["beta"]
    assert last["train/at"] > 0 and last["train/loss"] == pytest.approx(last["train/ce"] + beta / 2 * last["train/at"], rel=1e-5)


def test_fitnet_and_reviewkd_size_their_modules_from_a_users_student_under_a_resnet_teacher(mynets, digits, cache_dir, tmp_path):
    """Across families: the user's TinyNet (stages named by module, as for AT) under a built-in
    ResNet teacher; the regressor and fusions are sized from the shapes each network gives."""
    base = dict(
        student="mynets:TinyNet", features={"student": ["conv1", "conv2"]}, teacher="resnet14", cache_dir=cache_dir, **FAST
    )
    methods = {}
    fitnet = fit(
        TrainConfig(method="fitnet", **base),
        data=digits,
        measure_speed=False,
        on_epoch_end=lambda m, s: methods.update(fitnet=s.method),
    )
    conv = methods["fitnet"].regressor[0]  # stage -2: TinyNet's conv1 (8 channels) to resnet14's second stage (32)
    assert (conv.in_channels, conv.out_channels) == (8, 32)
    last = fitnet.history[-1]
    assert last["train/hint"] > 0 and last["train/loss"] == pytest.approx(last["train/ce"] + 100.0 * last["train/hint"], rel=1e-5)
    review = fit(
        TrainConfig(method="reviewkd", **base),
        data=digits,
        measure_speed=False,
        on_epoch_end=lambda m, s: methods.update(rkd=s.method),
    )
    fusions = methods["rkd"].fusions  # TinyNet's conv1, conv2 and embedding onto resnet14's last two stages and embedding
    assert [f.reduce[0].in_channels for f in fusions] == [8, 16, 16]
    assert [f.expand[0].out_channels for f in fusions] == [32, 64, 64]
    assert review.history[-1]["train/review"] > 0
    # the exported student is the user's TinyNet alone
    model, _ = load_model(review.save(tmp_path / "student.pt"))
    assert set(model.state_dict()) == set(build_model("mynets:TinyNet", 10, 1).state_dict())


def test_features_a_model_lacks_are_named_with_its_modules(mynets, digits, cache_dir):
    base = TrainConfig(method="at", student="mynets:TinyNet", cache_dir=cache_dir, **{**FAST, "teacher": "resnet8"})
    with pytest.raises(
        UserError, match=r"^method 'at' reads the student's feature maps but TinyNet names none: .*conv1, conv2, head$"
    ):
        fit(base, data=digits, measure_speed=False)
    with pytest.raises(
        UserError, match=r"the student \(TinyNet\) has no module 'layer9': its top-level modules are conv1, conv2, head"
    ):
        fit(dataclasses.replace(base, features={"student": ["layer9"]}), data=digits, measure_speed=False)
    with pytest.raises(UserError, match=r"feature 'head' is \(2, 10\), not N x C x H x W maps"):
        fit(dataclasses.replace(base, features={"student": ["conv1", "head"]}), data=digits, measure_speed=False)
    with pytest.raises(UserError, match="features: unknown key 'peer'"):
        dataclasses.replace(base, features={"peer": ["conv1"]})


def _torchvision_resnet18_file(torch_home) -> None:
    """What `torchvision.models.resnet18(weights="IMAGENET1K_V1")` leaves in the hub cache (random
    weights here: no network), under the file name torchvision looks for."""
    from torchvision.models import resnet18

    from kdsearch.models.pretrained import weights_cache_file

    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(resnet18().state_dict(), path)
    assert weights_cache_file("https://download.pytorch.org/models/resnet18-f37072fd.pth") == path


def test_a_torchvision_pretrained_teacher_is_fine_tuned_once_with_a_new_head(digits, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _torchvision_resnet18_file(tmp_path / "torch")
    cfg = TrainConfig(
        method="kd", teacher="resnet18", teacher_weights="IMAGENET1K_V1", teacher_head_lr=0.1, cache_dir=cache_dir, **FAST
    )
    logs = []
    teacher = get_teacher(cfg, digits, log=logs.append)
    assert any(line.startswith("fine-tuning teacher resnet18 on digits") for line in logs), logs
    assert type(teacher.model).__name__ == "ResNet" and teacher.model.fc.out_features == 10
    assert teacher.model.conv1.in_channels == 1  # the colour stem summed for grey digits
    assert teacher.path == teacher_cache_path(cfg, digits, "torchvision:torchvision.models:resnet18:IMAGENET1K_V1")
    logs.clear()
    again = get_teacher(cfg, digits, log=logs.append)
    assert any("from cache" in line for line in logs) and again.path == teacher.path
    # distilling from it reads its layers by name (torchvision's own module names)
    logs.clear()
    fit(
        dataclasses.replace(cfg, method="at"),
        data=digits,
        teacher=teacher,
        log=logs.append,
        measure_speed=False,
        evaluate_test=False,
    )
    assert any(line.startswith("AT pairs: teacher stage 2 (128x1x1) <-> student stage 1 (16x8x8)") for line in logs), logs


def test_missing_pretrained_weights_without_a_network_name_the_file(digits, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: the download fails for real
    # urlopen's opener keeps the proxies of its first call for the life of the process: this
    # test's dead proxy must not be the one every later test's urlopen goes through.
    monkeypatch.setattr(urllib.request, "_opener", None)
    cfg = TrainConfig(method="kd", teacher="resnet18", teacher_weights="IMAGENET1K_V1", cache_dir=cache_dir, **FAST)
    with pytest.raises(UserError) as err:
        get_teacher(cfg, digits)
    expected = tmp_path / "empty" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(err.value).startswith(
        f"torchvision weights resnet18 IMAGENET1K_V1 are not in the torch hub cache: looked for {expected}"
    )
    with pytest.raises(UserError, match="no weights 'IMAGENET9' for resnet18: choose one of IMAGENET1K_V1, DEFAULT"):
        get_teacher(dataclasses.replace(cfg, teacher_weights="IMAGENET9"), digits)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_state_dict_teacher_whose_head_fits_is_used_as_is(mynets, digits, cache_dir, tmp_path, suffix):
    model = build_model("mynets:TinyNet", 10, 1, args={"width": 12})
    path = tmp_path / f"teacher{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)  # a DDP training script's
    else:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    cfg = TrainConfig(
        method="kd",
        teacher="mynets:TinyNet",
        teacher_args={"width": 12},
        teacher_checkpoint=str(path),
        cache_dir=cache_dir,
        **FAST,
    )
    logs = []
    teacher = get_teacher(cfg, digits, log=logs.append)
    assert not any("fine-tuning" in line for line in logs) and teacher.path == path
    for k, v in model.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[k], v)
    with pytest.raises(UserError, match=r"does not fit a TinyNet: conv1\.0\.\w+ is \(12.*\) in the file, \(8.*\) in the model"):
        get_teacher(dataclasses.replace(cfg, teacher_args={}), digits)


def test_a_torchscript_teacher_distils_by_its_logits(digits, cache_dir, tmp_path):
    teacher = build_model("resnet8", 10, 1).eval()
    path = tmp_path / "teacher.torchscript.pt"
    torch.jit.trace(teacher, torch.zeros(2, 1, 8, 8)).save(str(path))
    cfg = TrainConfig(method="kd", teacher_checkpoint=str(path), cache_dir=cache_dir, **FAST)
    result = fit(cfg, data=digits)
    assert result.metrics["teacher/params"] == sum(p.numel() for p in teacher.parameters())
    with pytest.raises(UserError, match="method 'at' reads the teacher's feature maps but"):
        fit(dataclasses.replace(cfg, method="at"), data=digits, measure_speed=False)
    torch.jit.trace(build_model("resnet8", 3, 1).eval(), torch.zeros(2, 1, 8, 8)).save(str(path))
    with pytest.raises(UserError, match=r"TorchScript teacher .* gives \(2, 3\) for 2 images but digits has 10 classes"):
        fit(cfg, data=digits)


def test_teachers_are_cached_by_the_data_not_its_name(digits, cache_dir):
    cfg = TrainConfig(method="kd", cache_dir=cache_dir, **FAST)
    fewer = load_data(dataclasses.replace(cfg, train_subset=500))
    assert fewer.name == digits.name
    assert teacher_cache_path(cfg, fewer) != teacher_cache_path(cfg, digits)


@pytest.mark.slow
def test_the_command_line_imports_the_users_module_from_the_current_folder(mynets, cache_dir):
    # As a user runs it: `kdsearch` (a console script, whose sys.path does not hold the folder) in
    # the folder with mynets.py, nothing on PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    kdsearch = str(Path(sys.executable).with_name("kdsearch"))
    args = ["train", "--method", "ce", "--student", "mynets:TinyNet", "--student-args", "{width: 4}", "--epochs", "1"]
    proc = subprocess.run(
        [kdsearch, *args, "--json", "--cache-dir", cache_dir], cwd=mynets, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["config"]["student"] == "mynets:TinyNet" and result["config"]["student_args"] == {"width": 4}
    proc = subprocess.run([kdsearch, "train", "--student", "mynets:Tiny"], cwd=mynets, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "kdsearch: error: mynets has no 'Tiny' (for mynets:Tiny): it defines TinyNet, make_tiny, no_module"
    ]


def test_a_sweep_naming_a_model_that_cannot_be_imported_stops_before_ray(mynets, tmp_path, no_ray):
    import ray

    from kdsearch.sweeper.run import SweepOptions, run_sweep

    space = {"fixed": {"method": "ce", "student": "mynets:BigNet"}, "space": {"lr": {"choice": [0.1]}}}
    opts = SweepOptions(storage=str(tmp_path / "s"), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", verbose=0)
    with pytest.raises(
        UserError, match=r"^mynets has no 'BigNet' \(for mynets:BigNet\): it defines TinyNet, make_tiny, no_module$"
    ):
        run_sweep(space, opts, log=lambda _: None)
    assert not (tmp_path / "m.db").exists() and not ray.is_initialized()  # nothing started: no MLflow store, no Ray


def test_only_the_users_own_code_is_shipped_to_ray_workers(mynets, tmp_path, monkeypatch):
    """An installed distribution outside site-packages (a folder on PYTHONPATH with its
    .dist-info) is not sent as py_modules; the user's own module is."""
    from kdsearch.models.imported import module_file

    ext = tmp_path / "ext"
    (ext / "vendorpkg").mkdir(parents=True)
    (ext / "vendorpkg" / "__init__.py").write_text("def Net(num_classes):\n    raise NotImplementedError\n")
    info = ext / "vendorpkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vendorpkg\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("vendorpkg\n")
    monkeypatch.syspath_prepend(str(ext))
    monkeypatch.delitem(sys.modules, "mynets", raising=False)  # an earlier test's copy
    (mynets / "ownpkg").mkdir()
    (mynets / "ownpkg" / "__init__.py").write_text("")
    assert module_file("vendorpkg:Net") is None
    assert module_file("mynets:TinyNet") == (mynets / "mynets.py").resolve()
    assert module_file("ownpkg:Net") == (mynets / "ownpkg").resolve()
    assert module_file("torchvision.models:resnet18") is None and module_file("collections:OrderedDict") is None


@pytest.mark.slow  # a subprocess
def test_the_code_sent_with_the_trials_imports_a_module_and_a_package_in_a_fresh_process(tmp_path):
    """For a Ray kdsearch did not start: the user's module and package, archived by the driver,
    import in a process that has neither on its path (as a trial's worker), from the archive."""
    from kdsearch.ray_trials.cluster import pack_code

    code = tmp_path / "code"
    (code / "ownpkg" / "sub").mkdir(parents=True)
    (code / "ownpkg" / "__init__.py").write_text("from ownpkg.sub.layers import WIDTH\n")
    (code / "ownpkg" / "sub" / "__init__.py").write_text("")
    (code / "ownpkg" / "sub" / "layers.py").write_text("WIDTH = 6\n")
    (code / "ownpkg" / "__pycache__").mkdir()
    (code / "ownpkg" / "__pycache__" / "stale.pyc").write_bytes(b"not sent")
    (code / "ownmod.py").write_text("def net():\n    return 'ownmod.net'\n")
    archive = tmp_path / "archive.bin"
    archive.write_bytes(pack_code([str(code / "ownpkg"), str(code / "ownmod.py")]))
    probe = (
        "import sys, pathlib\n"
        "from kdsearch.ray_trials.cluster import use_code\n"
        f"use_code(pathlib.Path({str(archive)!r}).read_bytes())\n"
        "import ownpkg, ownmod\n"
        "print(ownpkg.WIDTH, ownmod.net(), ownmod.__file__.startswith(sys.path[0]))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["6", "ownmod.net", "True"]
    assert not [n for n in zipfile.ZipFile(archive).namelist() if "__pycache__" in n]

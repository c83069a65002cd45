"""The command line as a user runs it: results on stdout, and one-line errors with exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, wait_until, write_fashion_mnist

pytestmark = pytest.mark.slow  # Ray, subprocesses or a browser: `pytest -m "not slow"` skips them


def run(*args, cwd=None, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "kdsearch", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdsearch"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_train_json_prints_final_metrics(tmp_path):
    proc = run(
        "train",
        "--method",
        "kd",
        "--dataset",
        "digits",
        "--epochs",
        "3",
        "--teacher-epochs",
        "3",
        "--set",
        "temperature=4",
        "--set",
        "alpha=0.5",
        "--cache-dir",
        str(tmp_path),
        "--json",
        "--save",
        str(tmp_path / "s.pt"),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["config"]["method_args"] == {"temperature": 4, "alpha": 0.5}
    assert out["config"]["student"] == "resnet8" and out["config"]["teacher"] == "resnet20"
    for key in (
        "val/acc",
        "test/acc",
        "student/params",
        "compression/ratio",
        "student/flops",
        "latency/cpu_ms",
        "throughput/cpu_img_s",
        "accuracy/drop",
        "student/size_mb",
    ):
        assert key in out["metrics"]
    assert (tmp_path / "s.pt").is_file()


def test_train_with_yaml_config_and_human_summary(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: ce\ndataset: digits\nepochs: 2\nlr: 5e-2\nweight_decay: 1e-4\n")
    proc = run("train", "--config", str(cfg), "--epochs", "1", "--cache-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "ce on digits: student resnet8" in proc.stdout and "compression:" in proc.stdout
    assert "epoch   1/1" in proc.stderr and "epoch   2/" not in proc.stderr  # the flag overrides the file


def test_teacher_command_caches(tmp_path):
    args = (
        "teacher",
        "--dataset",
        "digits",
        "--arch",
        "resnet8",
        "--teacher-epochs",
        "2",
        "--cache-dir",
        str(tmp_path),
        "--json",
    )
    first = json.loads(run(*args).stdout)
    assert first["path"].startswith(str(tmp_path)) and os.path.isfile(first["path"])
    second = run(*args[:-1])
    assert "from cache" in second.stderr and first["path"] in second.stdout


def test_fashion_mnist_from_data_dir(tmp_path):
    write_fashion_mnist(tmp_path / "fm", n_train=60)
    proc = run(
        "train",
        "--method",
        "ce",
        "--dataset",
        "fashion_mnist",
        "--data-dir",
        str(tmp_path / "fm"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--json",
        "--cache-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metrics"]["student/params"] < 100_000


@pytest.mark.parametrize(
    "args, fragments",
    [
        (
            ["train", "--method", "hintnet"],
            ["unknown method 'hintnet'", "at, ce, crd, dkd, dml, fitnet, kd, pkt, reviewkd, rkd, sp"],
        ),
        (["train", "--dataset", "imagenet"], ["unknown dataset 'imagenet'", "celeba, cifar10"]),
        (["train", "--method", "ce", "--student", "vgg"], ["unknown architecture 'vgg'", "resnet18"]),
        (["train", "--dataset", "cifar10", "--data-dir", "/no/such"], ["data directory /no/such does not exist", "--download"]),
        (["train", "--set", "temp=3"], ["method 'kd' has no setting 'temp'", "temperature, alpha"]),
        (["train", "--set", "alpha"], ["--set expects KEY=VALUE"]),
        (["train", "--set", "temperature=abc"], ["method 'kd': temperature must be a number, got 'abc'"]),
        (["train", "--epochs", "many"], ["epochs must be an integer"]),
        (["train", "--lr", "-1"], ["lr must be > 0"]),
        (["train", "--optimizer", "lion"], ["unknown optimizer 'lion'", "sgd, adamw"]),
        (["train", "--teacher-checkpoint", "/no/t.pt"], ["checkpoint /no/t.pt does not exist"]),
        (["train", "--config", "/no/cfg.yaml"], ["/no/cfg.yaml: no such file"]),
        (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragments, tmp_path):
    assert_one_line_error(run(*args, "--cache-dir", str(tmp_path)), *fragments)


def test_a_sweep_name_cannot_escape_the_storage_folder(tmp_path):
    storage = tmp_path / "deep" / "S"
    for name in ("../../escape", "a/b", ".hidden"):
        proc = run(
            "sweep", "search_spaces/quickstart.yaml", "--name", name, "--storage", str(storage), cwd=Path(__file__).parent.parent
        )
        assert_one_line_error(proc, f"sweep name {name!r} must be letters")
    assert not any(tmp_path.rglob("*sweep.json")) and not (tmp_path / "escape").exists()


def test_bad_yaml_configs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: kd\nlrr: 0.1\n")
    assert_one_line_error(run("train", "--config", str(bad)), f"{bad}: unknown key 'lrr'", "valid keys are")
    bad.write_text("method: [kd\n")
    assert_one_line_error(run("train", "--config", str(bad)), f"{bad}: malformed YAML at line")
    bad.write_text("- kd\n- at\n")
    assert_one_line_error(run("train", "--config", str(bad)), "expected a mapping")
    bad.write_text("method: kd\n", encoding="utf-16")
    assert_one_line_error(run("train", "--config", str(bad)), f"{bad}: not UTF-8 text", "save it as UTF-8")
    bad.write_bytes(bytes(range(256)))
    assert_one_line_error(run("sweep", str(bad)), f"{bad}: not UTF-8 text")


def test_ui_serves_on_loopback_and_stops_its_server_on_sigterm(tmp_path):
    """Also behind an HTTP proxy (http_proxy set, as on many company machines, and no no_proxy):
    the server kdsearch starts on loopback is asked directly, not through the proxy."""
    import signal
    import urllib.request

    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).create_experiment("demo")
    port = free_port()
    dead_proxy = "http://127.0.0.1:9"  # nothing listens there
    proxies = {var: dead_proxy for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")}
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"} | proxies
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdsearch", "ui", "--tracking-uri", store, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert f"at http://127.0.0.1:{port}" in lines[0] and f"demo: http://127.0.0.1:{port}/#/experiments/" in lines[1], (
            lines + [proc.stderr.read() if proc.poll() is not None else ""]
        )
        assert direct.open(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port} " in listening and f"0.0.0.0:{port} " not in listening and f"*:{port} " not in listening
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)

    def server_gone():  # the MLflow server went with it
        try:
            direct.open(f"http://127.0.0.1:{port}/health", timeout=2)
        except OSError:
            return True
        return False

    wait_until(server_gone, 30, f"the MLflow server on port {port} to stop")


def _space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, extra, fragments",
    [
        ("fixed: {method: kd}\nspace: {alpha: {uniform: [1, 0]}}\n", [], ["space.alpha: uniform bounds must be [low, high]"]),
        ("fixed: {method: kd}\nspace: {temperature: {loguniform: [-1, 4]}}\n", [], ["loguniform bounds must be > 0"]),
        ("fixed: {method: kd, lrr: 0.1}\n", [], ["fixed: unknown key 'lrr'"]),
        ("fixed: [kd\n", [], ["malformed YAML at line"]),
        ("", [], ["a search space is a mapping"]),
        ("fixed: {method: kd}\nspace: {alpha: {uniform: [0, 1]}}\n", ["--resume"], ["nothing to resume at"]),
        (
            "fixed: {method: kd}\nspace: {alpha: {uniform: [0, 1]}}\n",
            ["--storage", "/proc/kdsearch-sweeps"],
            ["cannot create the sweep storage"],
        ),
        (
            "fixed: {method: kd}\nspace: {alpha: {uniform: [0, 1]}}\n",
            ["--num-samples", "0"],
            ["--num-samples must be at least 1"],
        ),
        ("fixed: {method: kd}\nspace: {alpha: {uniform: [0, 1]}}\n", ["--gpus-per-trial", "-1"], ["--gpus-per-trial >= 0"]),
    ],
)
def test_bad_sweep_input_is_one_line_exit_2_and_writes_nothing(tmp_path, text, extra, fragments):
    storage = tmp_path / "sweeps"
    args = ["sweep", _space(tmp_path, text), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    if "--storage" not in extra:
        args += ["--storage", str(storage)]
    assert_one_line_error(run(*args, *extra), *fragments)
    assert not storage.exists() or not any(storage.iterdir())  # nothing half-written


def test_a_mistake_in_a_sweep_is_told_before_ray_tune_and_mlflow_are_imported(tmp_path):
    """A typo in the space, a name already taken: one line before the ~2.5 s of importing Ray,
    Tune and MLflow (the sweep is planned first)."""
    good = _space(tmp_path, "name: taken\nfixed: {method: kd}\nspace: {alpha: {uniform: [0, 1]}}\n")
    (tmp_path / "sweeps" / "taken").mkdir(parents=True)
    typo = str(tmp_path / "typo.yaml")
    Path(typo).write_text("fixed: {method: kd, lrr: 0.1}\n")
    probe = (
        "import sys\nfrom kdsearch.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(code, sorted(m for m in ('ray', 'ray.tune', 'mlflow') if m in sys.modules))\n"
    )
    for space, said in ((typo, "fixed: unknown key 'lrr'"), (good, "a sweep named 'taken' already exists")):
        args = ["sweep", space, "--storage", str(tmp_path / "sweeps"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=300)
        assert said in proc.stderr and proc.stdout.split("\n")[0] == "2 []", proc.stdout + proc.stderr


def test_bad_data_and_checkpoints_through_the_cli(tmp_path):
    write_fashion_mnist(tmp_path / "fm", gz=False)
    images = tmp_path / "fm" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])  # a corrupted (truncated) dataset file
    assert_one_line_error(
        run("train", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "fm")), "is truncated", "re-download"
    )
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert_one_line_error(
        run("train", "--teacher-checkpoint", str(tmp_path / "notes.pt"), "--cache-dir", str(tmp_path)),
        "is not a readable checkpoint",
    )
    assert_one_line_error(run("export", str(tmp_path / "notes.pt"), "--out", str(tmp_path / "o")), "is not a readable checkpoint")
    assert not (tmp_path / "o").exists()


def test_the_sweep_flags_are_the_sweep_options_with_their_defaults_written_once(capsys):
    """One source for the sweep's options: each SweepOptions field with help is a flag, parsed to
    the field's default when not given, and the defaults its help states come from the field."""
    import dataclasses

    from kdsearch.cli import build_parser
    from kdsearch.errors import UserError
    from kdsearch.search.options import SweepOptions

    parser = build_parser()
    args = parser.parse_args(["sweep", "space.yaml"])
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for f in SweepOptions.flags():
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text and " ".join(f.metadata["help"].split()) in help_text, flag
        assert getattr(args, f.name) == f.default, f.name
    assert "CPUs per trial (default 1)" in help_text
    assert {f.name for f in dataclasses.fields(SweepOptions)} - {f.name for f in SweepOptions.flags()} == {
        "overrides", "verbose", "data", "teacher"
    }  # fmt: skip
    assert parser.parse_args(["sweep", "s.yaml", "--cpus-per-trial", "0.5", "--no-register"]).register is False
    with pytest.raises(UserError, match="--cpus-per-trial must be > 0"):
        SweepOptions(cpus_per_trial=0)  # the Python API is checked as the command line is


@pytest.mark.parametrize(
    "args", [["--help"], ["sweep", "--help"], ["export", "--help"], ["sweep"], ["train", "--epochs", "x"], ["nosuch"]]
)
def test_help_and_argument_errors_load_no_torch_ray_or_mlflow(args):
    """Help and argument errors answer at once: importing torch alone takes over a second."""
    code = (
        "import sys\nfrom kdsearch.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna', 'pandas') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "HEAVY []", proc.stderr
    assert ("usage: kdsearch" in proc.stdout) if "--help" in args else ("error:" in proc.stderr)

"""The registered student serves without kdsearch: an MLflow pyfunc model (ONNX + model card +
its own code) that a virtual environment without kdsearch loads by its alias and predicts with."""

import json
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from kdsearch import TrainConfig, fit
from kdsearch.data import load_data
from kdsearch.delivery.registry import register_student
from kdsearch.models.checkpoint import load_model

pytestmark = pytest.mark.slow  # a second Python environment and MLflow model logging


def kdsearch_free_python(root):
    """A separate virtual environment that sees the installed packages (mlflow, onnxruntime, numpy,
    pandas, ...) but not kdsearch: a .pth file names the site-packages folder, and the editable
    install's own .pth there is not processed for a folder added that way."""
    venv = root / "serve-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (root / "serve-env" / site.split("serve-env/", 1)[1] / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run(
        [python, "-c", "import mlflow, onnxruntime; import kdsearch"], cwd=root, capture_output=True, text=True
    )
    assert "No module named 'kdsearch'" in probe.stderr, probe.stderr  # mlflow imports there, kdsearch does not
    return python


def registered_digits_student(tmp_path, name: str, epochs: int):
    """A digits student trained here, logged on a run as a sweep's log_best does, and registered
    as ``name``: (data, checkpoint, tracking uri, client, version)."""
    cfg = TrainConfig(method="ce", dataset="digits", epochs=epochs, threads=2)
    data = load_data(cfg)
    checkpoint = fit(cfg, data=data, measure_speed=False).save(tmp_path / "student.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment(name, artifact_location=str(tmp_path / "artifacts")))
    client.log_artifact(run.info.run_id, str(checkpoint), artifact_path="best_student")
    return data, checkpoint, uri, client, register_student(uri, run.info.run_id, checkpoint, name)


def test_the_registered_student_serves_without_kdsearch(tmp_path, capsys):
    data, checkpoint, uri, client, version = registered_digits_student(tmp_path, "serve-student", epochs=2)
    assert str(client.get_model_version_by_alias("serve-student", "champion").version) == version

    # kdsearch's own probabilities on 5 validation images, as uint8 (N, H, W, C)
    images = data.val_x[:5]
    student, payload = load_model(checkpoint)
    mean = torch.tensor(payload["dataset"]["mean"]).view(1, -1, 1, 1) * 255
    std = torch.tensor(payload["dataset"]["std"]).view(1, -1, 1, 1) * 255
    with torch.no_grad():
        expected = torch.softmax(student.eval()((images.float() - mean) / std), dim=1).double().numpy()
    np.save(tmp_path / "images.npy", images.permute(0, 2, 3, 1).numpy())

    python = kdsearch_free_python(tmp_path)
    script = textwrap.dedent(f"""
        import json, sys
        import mlflow, numpy as np
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model("models:/serve-student@champion")
        nhwc = np.load({str(tmp_path / "images.npy")!r})
        out = model.predict(nhwc)
        try:  # one layout, the signature's: (N, H, W, C)
            model.predict(nhwc.transpose(0, 3, 1, 2))
            raise SystemExit("(N, C, H, W) was accepted")
        except mlflow.exceptions.MlflowException as exc:
            assert "does not match expected shape (-1, 8, 8, 1)" in str(exc), exc
        print(json.dumps({{"columns": list(out.columns), "probs": out.to_numpy().tolist(), "kdsearch": "kdsearch" in sys.modules}}))
    """)
    proc = subprocess.run([python, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["columns"] == data.class_names and served["kdsearch"] is False
    np.testing.assert_allclose(np.array(served["probs"]), expected, atol=1e-4)

    # kdsearch predict gives the same probabilities from the registered model, the checkpoint and an
    # export of the registered model (found through its run), for PNG files of those images
    from PIL import Image

    from kdsearch.cli import main

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"img{i}.png")
    outputs = {}
    for source in ("models:/serve-student@champion", str(checkpoint), str(tmp_path / "export")):
        if source.endswith("export"):
            args = ["export", "models:/serve-student@champion", "--format", "safetensors", "--out", source, "--tracking-uri", uri]
            assert main(args) == 0
        capsys.readouterr()
        assert main(["predict", source, str(folder), "--json", "--tracking-uri", uri]) == 0
        results = json.loads(capsys.readouterr().out)
        outputs[source] = np.array([[r["probabilities"][c] for c in data.class_names] for r in results])
        assert [r["image"] for r in results] == [str(folder / f"img{i}.png") for i in range(5)]
    for probs in outputs.values():
        np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert main(["predict", str(checkpoint), str(folder / "img0.png"), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    top = np.argsort(-expected[0])[:2]
    assert line == f"{folder / 'img0.png'}: {top[0]} {expected[0][top[0]]:.3f}, {top[1]} {expected[0][top[1]]:.3f}"
    assert main(["predict", "models:/nothing@champion", str(folder), "--tracking-uri", uri]) == 2
    assert "no registered model models:/nothing@champion" in capsys.readouterr().err


def test_mlflow_models_serve_answers_each_payload_format(tmp_path):
    """A real `mlflow models serve` of the champion over REST: every JSON payload MLflow's scoring
    server documents, and parquet, give the model's probabilities; a wrong shape is a 400 that
    names the shape to send; CSV cannot carry a tensor (MLflow's own parser refuses it)."""
    import io
    import os
    import signal
    import urllib.error
    import urllib.request

    import pandas as pd
    from conftest import free_port, wait_until

    data, checkpoint, uri, _, _ = registered_digits_student(tmp_path, "rest-student", epochs=1)
    import mlflow
    import onnxruntime

    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info("models:/rest-student@champion")
    assert info.signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, 8, 8, 1)}}]
    requirements = open(mlflow.pyfunc.get_model_dependencies("models:/rest-student@champion")).read().split()
    assert f"mlflow=={mlflow.__version__}" in requirements and f"onnxruntime=={onnxruntime.__version__}" in requirements

    nhwc = data.val_x[:3].permute(0, 2, 3, 1).numpy()
    student, payload = load_model(checkpoint)
    mean = torch.tensor(payload["dataset"]["mean"]).view(1, -1, 1, 1) * 255
    std = torch.tensor(payload["dataset"]["std"]).view(1, -1, 1, 1) * 255
    with torch.no_grad():
        expected = torch.softmax(student.eval()((data.val_x[:3].float() - mean) / std), dim=1).double().numpy()

    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/rest-student@champion", "--env-manager", "local",
         "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip

    def post(body, content_type="application/json"):
        body = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_until(up, 120, "mlflow models serve to answer /ping", interval=0.5)
        flat = [image.ravel().tolist() for image in nhwc]
        parquet = io.BytesIO()
        pd.DataFrame({"images": [image.ravel() for image in nhwc]}).to_parquet(parquet)
        payloads = {
            "inputs": ({"inputs": nhwc.tolist()}, "application/json"),
            "instances": ({"instances": nhwc.tolist()}, "application/json"),
            "dataframe_split": ({"dataframe_split": {"columns": ["images"], "data": [[f] for f in flat]}}, "application/json"),
            "dataframe_records": ({"dataframe_records": [{"images": f} for f in flat]}, "application/json"),
            "parquet": (parquet.getvalue(), "application/vnd.apache.parquet"),
        }
        for name, (body, content_type) in payloads.items():
            status, answer = post(body, content_type)
            assert status == 200, (name, answer)
            probs = np.array([[row[c] for c in data.class_names] for row in answer["predictions"]])
            np.testing.assert_allclose(probs, expected, atol=1e-4, err_msg=name)
        for wrong in (nhwc[..., 0], np.zeros((2, 9, 9, 1), dtype=np.uint8), nhwc.transpose(0, 3, 1, 2)):
            status, answer = post({"inputs": wrong.tolist()})
            assert status == 400
            assert answer["message"].endswith(f"Shape of input {wrong.shape} does not match expected shape (-1, 8, 8, 1).")
        csv = "\n".join([",".join(f"p{i}" for i in range(64))] + [",".join(map(str, f)) for f in flat])
        status, answer = post(csv.encode(), "text/csv")
        assert status == 400 and "Failed to parse input as a Pandas DataFrame" in answer["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_model_code_loads_without_mlflow_warnings():
    """MLflow warns about a predict without type hints each time the model code is imported (every
    sweep end, every predict of a registered model); the annotated input keeps it quiet."""
    import runpy
    import warnings

    from kdsearch.delivery.registry import MLFLOW_MODEL_CODE

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runpy.run_path(str(MLFLOW_MODEL_CODE))
    assert [str(w.message) for w in caught if "mlflow" in w.filename] == []

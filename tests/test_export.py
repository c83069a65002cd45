"""Export round trips in every format, the model card, and the sweep report."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from kdsearch import TrainConfig, fit, load_student
from kdsearch.cli import main
from kdsearch.delivery.export import FILES, FORMATS, export_student
from kdsearch.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = TrainConfig(method="kd", epochs=2, teacher_epochs=2, teacher="resnet8", cache_dir=str(folder / "cache"), threads=2)
    result = fit(cfg)
    return result.save(folder / "student.pt"), result


def test_every_format_round_trips_and_is_verified(checkpoint, tmp_path):
    path, result = checkpoint
    report = export_student(path, list(FORMATS), tmp_path)
    assert set(report["formats"]) == set(FORMATS) and report["images"] == 144
    assert report["images_note"].startswith("the first 144 of the 144 validation images")
    for fmt, entry in report["formats"].items():
        assert (tmp_path / FILES[fmt]).stat().st_size == entry["bytes"] > 0
        assert entry["max_abs_diff"] <= 1e-4
        assert entry["verify/acc"] == pytest.approx(result.metrics["val/acc"])  # all 144 validation images: the same number
    x = torch.randn(5, 1, 8, 8)
    expected = result.student.cpu().eval()(x)
    assert torch.allclose(load_student(tmp_path)(x), expected, atol=1e-5)
    assert torch.allclose(torch.jit.load(str(tmp_path / FILES["torchscript"]))(x), expected, atol=1e-5)
    session = onnxruntime.InferenceSession(str(tmp_path / FILES["onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["logits"], {"images": x.numpy()})[0]  # any batch size: the batch axis is dynamic
    assert np.allclose(onnx_out, expected.detach().numpy(), atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*FILES.values(), "model.json"])  # no temporary or side files


def test_student_only_no_prefixes_no_optimizer(checkpoint, tmp_path):
    path, result = checkpoint
    export_student(path, ["pt", "safetensors"], tmp_path)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(result.student.state_dict())
    assert not any(k.startswith(("module.", "student.", "_orig_mod.", "teacher")) for k in state)


def test_model_card_describes_the_student(checkpoint, tmp_path):
    path, result = checkpoint
    export_student(path, ["safetensors"], tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["architecture"]["arch"] == "resnet8" and card["num_outputs"] == 10
    assert card["input"]["channels"] == 1 and card["input"]["size"] == [8, 8]
    assert card["input"]["normalisation"]["mean"] == pytest.approx(list(result.data_info["mean"]))
    assert card["class_names"] == [str(d) for d in range(10)] and card["dataset"] == "digits"
    assert card["distillation"]["method"] == "kd" and card["distillation"]["teacher"] == "resnet8"
    assert card["metrics"]["test/acc"] == result.metrics["test/acc"]
    assert card["metrics"]["compression/ratio"] == pytest.approx(result.metrics["compression/ratio"])
    assert card["files"]["safetensors"]["file"] == "model.safetensors"


def test_sources_without_a_checkpoint_are_clear_errors(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "sweep.json").write_text(json.dumps({"name": "half"}))
    assert main(["export", str(tmp_path / "half"), "--out", str(tmp_path / "o")]) == 2
    assert "has no best checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "no sweep at" in capsys.readouterr().err
    run_id = "0" * 32
    assert main(["export", run_id, "--out", str(tmp_path / "o"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert f"no MLflow run {run_id}" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export_student(tmp_path / "x.pt", ["tflite"], tmp_path / "o")
    with pytest.raises(UserError, match="holds no model.json"):
        load_student(tmp_path)


def test_export_works_where_the_data_is_not(tmp_path):
    # A student trained on data that is then gone (a copied sweep folder, another machine): the
    # checkpoint carries a sample of validation images and the export is verified on it.
    import shutil

    from conftest import write_fashion_mnist

    write_fashion_mnist(tmp_path / "fm", n_train=120, n_test=20)
    cfg = TrainConfig(method="ce", dataset="fashion_mnist", data_dir=str(tmp_path / "fm"), epochs=1, threads=2)
    path = fit(cfg, measure_speed=False).save(tmp_path / "student.pt")
    shutil.rmtree(tmp_path / "fm")
    report = export_student(path, ["onnx"], tmp_path / "out")
    assert report["images"] == 12 and report["images_note"].startswith("the first 12 of the 12 validation images")
    assert report["formats"]["onnx"]["max_abs_diff"] <= 1e-4
    with pytest.raises(UserError, match="cannot load the validation data to verify the export"):
        export_student(path, ["onnx"], tmp_path / "out2", data_dir=str(tmp_path / "fm"))  # asked for data that is gone


def card_only_client(onnx_path, image_paths):
    """A deployment client that knows nothing of kdsearch: Pillow, numpy, onnx and onnxruntime,
    and the model card the ONNX file carries. It follows the card's preprocessing fields."""
    import onnx
    from PIL import Image

    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    card = json.loads(props["kdsearch.card"])
    pre, norm = card["input"]["preprocessing"], card["input"]["normalisation"]
    assert pre["library"] == "Pillow" and pre["crop"] == "centre-square" and pre["resize"]["interpolation"] == "bilinear"
    batch = []
    for path in image_paths:
        img = Image.open(path).convert(pre["mode"])
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        img = img.resize((pre["resize"]["width"], pre["resize"]["height"]), Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.float32)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        mean = np.asarray(norm["mean"], dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(norm["std"], dtype=np.float32).reshape(-1, 1, 1)
        batch.append((pixels / 255 - mean) / std)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: np.stack(batch).astype(np.float32)})[0].astype(np.float64)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return card, z / z.sum(axis=1, keepdims=True)


def test_a_client_with_the_card_alone_preprocesses_as_predict_does(tmp_path, capsys):
    """Non-square colour photos: the card says every step (mode, centre crop, bilinear resize,
    normalisation), so a client that reads only the card gets predict's probabilities."""
    from conftest import write_image_folder
    from PIL import Image
    from safetensors import safe_open

    write_image_folder(tmp_path / "data", per_class=20, colour=True)
    cfg = TrainConfig(dataset="imagefolder", data_dir=str(tmp_path / "data"), image_size=16, epochs=2, threads=2)
    checkpoint = fit(cfg, measure_speed=False).save(tmp_path / "student.pt")
    assert export_student(checkpoint, ["onnx", "safetensors"], tmp_path / "export")
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    names = []
    for i in range(8):  # 64 wide, 48 high, colour gradients with noise: crop and interpolation both matter
        base = np.linspace(0, 255, 64)[None, :, None] * rng.uniform(0.2, 1.0, size=(1, 1, 3))
        pixels = (base + rng.integers(0, 60, size=(48, 64, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="RGB").save(photos / f"{i}.png")
        names.append(photos / f"{i}.png")
    assert main(["predict", str(tmp_path / "export"), str(photos), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    card, probs = card_only_client(tmp_path / "export" / "model.onnx", names)
    expected = np.array([[r["probabilities"][c] for c in card["class_names"]] for r in results])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert card["input"]["preprocessing"]["mode"] == "RGB" and card["input"]["size"] == [16, 16]
    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta["kdsearch.card"])["class_names"] == card["class_names"]

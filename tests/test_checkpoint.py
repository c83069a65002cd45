import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.models import build_model
from kdsearch.models.checkpoint import load_model, model_spec, read_checkpoint, save_checkpoint


class _WritesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_round_trip(tmp_path):
    model = build_model("resnet8", 10, 1)
    path = save_checkpoint(tmp_path / "a" / "m.pt", model, model_spec("resnet8", 10, 1, "cifar", 1.0), metrics={"val/acc": 0.5})
    loaded, payload = load_model(path)
    assert payload["metrics"] == {"val/acc": 0.5}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_a_checkpoint_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"format": "kdsearch-checkpoint/1", "payload": _WritesFile(str(marker))}, path)
    with pytest.raises(UserError, match=r"refusing to load .*carries code \(io.open\)"):
        read_checkpoint(path)
    assert not marker.exists()


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="is not a kdsearch checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")

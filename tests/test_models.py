import pytest
import torch

from kdsearch.errors import UserError
from kdsearch.models import MODELS, build_model


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet18", "resnet50"])
def test_models_return_logits_and_stage_outputs(name):
    model = build_model(name, num_classes=7, in_channels=1, stem="cifar").eval()
    x = torch.randn(2, 1, 16, 16)
    logits, features = model.forward_with_features(x)
    assert logits.shape == (2, 7) and torch.allclose(model(x), logits)
    sizes = [f.shape[-1] for f in features]
    # CIFAR stem: no downsampling before the first stage; each later stage halves.
    assert sizes[0] == 16 and all(a == 2 * b for a, b in zip(sizes, sizes[1:]))
    assert len(features) == (3 if name in ("resnet8", "resnet20") else 4)


def test_imagenet_stem_downsamples_four_times_before_the_first_stage():
    model = build_model("resnet18", 40, 3, stem="imagenet").eval()
    _, features = model.forward_with_features(torch.randn(1, 3, 128, 128))
    assert features[0].shape[-1] == 32


def test_small_resnet_sizes_and_width():
    params = {n: sum(p.numel() for p in build_model(n, 10).parameters()) for n in ("resnet8", "resnet20", "resnet56")}
    assert params["resnet8"] < 100_000 < params["resnet20"] < 300_000 < params["resnet56"] < 900_000
    wide = sum(p.numel() for p in build_model("resnet8", 10, width=2.0).parameters())
    assert 3.5 * params["resnet8"] < wide < 4.5 * params["resnet8"]


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(UserError) as err:
        build_model("vgg11", 10)
    assert (
        str(err.value)
        == f"unknown architecture 'vgg11': choose one of {', '.join(sorted(MODELS))}, or name your own as module:Name"
    )
    with pytest.raises(UserError, match="fixed width"):
        build_model("resnet18", 10, width=0.5)

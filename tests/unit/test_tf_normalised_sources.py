"""GoogLeNet's and Inception v3's torchvision weights expect inputs in [-1, 1]: torchvision converts ImageNet-normalised
input with transform_input=True, airflow-tl records that normalisation in the card instead. Both must feed the
network the same numbers. Random weights; nothing is downloaded (load_weights=False reads the catalogue only)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

from airflow_tl.models.architectures import build_model
from airflow_tl.pretrained.sources import resolve_source


@pytest.mark.parametrize(("architecture", "size"), [("googlenet", 64), ("inception_v3", 80)])
def test_the_cards_normalisation_stands_for_torchvisions_transform_input(architecture: str, size: int) -> None:
    source = resolve_source(f"torchvision://{architecture}/IMAGENET1K_V1", store=None, load_weights=False)  # type: ignore[arg-type]
    assert (source.input.mean, source.input.std) == ([0.5] * 3, [0.5] * 3)
    preset = torchvision.models.get_model_weights(architecture)["IMAGENET1K_V1"].transforms()

    torch.manual_seed(0)
    ours = build_model(architecture, 10).eval()
    theirs = torchvision.models.get_model(
        architecture, weights=None, num_classes=10, aux_logits=False, init_weights=False, transform_input=True
    ).eval()
    theirs.load_state_dict(ours.state_dict())
    pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(TF.normalize(pixels, mean=list(preset.mean), std=list(preset.std)))
        got = ours(TF.normalize(pixels, mean=source.input.mean, std=source.input.std))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_other_families_keep_their_weights_preset() -> None:
    source = resolve_source("torchvision://resnet18/IMAGENET1K_V1", store=None, load_weights=False)  # type: ignore[arg-type]
    assert (source.input.mean, source.input.std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

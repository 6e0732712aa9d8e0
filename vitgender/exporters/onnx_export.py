"""PyTorch checkpoint -> fp32 ONNX with a dynamic batch axis.

We use torch's own exporter (`torch.onnx.export(dynamo=True)`) rather than optimum: it is the
exporter PyTorch maintains, it emits a native `Gelu` (opset >= 20) or the Erf form
(opset < 20) on request, and it needs no extra package that would cap the transformers
version. The graph is checked with `onnx.checker` and, for opset >= 20, onnx2tf gets a
`Gelu` it converts to built-in TFLite ops (the Erf form becomes Flex ops LiteRT refuses).

The only op of a ViT that needs the batch size is HF's `cls_token.expand(batch, -1, -1)` before
the concatenation with the patch tokens (Shape -> Concat -> Expand in ONNX). onnx2tf cannot
convert that with a free batch (its layout inference mis-shapes the position-embedding Add).
Each model type's `batch_free_embeddings` (`vitgender.models.base`) rewrites the step as an
identity: pad the patch tokens with zero tokens in front, add a constant holding the prefix
tokens ([CLS], DeiT's distillation token, DINOv2's registers), then the position table (DINOv2's
interpolated positions evaluated once at the export's image size). The graph then has no Shape
op, every artifact derived from it takes any batch, and each element sees the same additions in
the same order as in HF's forward (x + 0 is exact), so the logits agree with HF's within float
rounding (tested per model type).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from vitgender.exporters.config import ExportConfig


class _LogitsOnly(torch.nn.Module):
    """Exports `pixel_values -> logits` instead of HF's output dataclass."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def export_onnx(model: torch.nn.Module, config: ExportConfig, height: int, width: int, path: Path, opset: int) -> Path:
    import onnx

    model.config._attn_implementation = "eager"  # plain MatMul/Softmax: what ORT's fusions and onnx2tf expect
    example = torch.zeros(2, model.config.num_channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=1024)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" noise
    with warnings.catch_warnings(), torch.inference_mode(), config.model.batch_free_embeddings(model, height, width):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _LogitsOnly(model).eval(),
            (example,),
            dynamo=True,
            input_names=[config.input_name],
            output_names=[config.output_name],
            dynamic_shapes={"pixel_values": {0: batch}},
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    graph = onnx.load(str(path))
    # The exporter's value_info carries shapes traced at the example batch size; ORT's
    # quantization tools re-infer shapes and refuse the conflict. Shapes are re-derivable.
    del graph.graph.value_info[:]
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path

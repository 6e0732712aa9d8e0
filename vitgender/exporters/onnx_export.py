"""PyTorch checkpoint -> fp32 ONNX with a dynamic batch axis.

We use torch's own exporter (`torch.onnx.export(dynamo=True)`) rather than optimum: it is the
exporter PyTorch maintains, it emits a native `Gelu` (opset >= 20) or the Erf form
(opset < 20) on request, and it needs no extra package that would cap the transformers
version. The graph is checked with `onnx.checker` and, for opset >= 20, onnx2tf gets a
`Gelu` it converts to built-in TFLite ops (the Erf form becomes Flex ops LiteRT refuses).

The only op of a ViT that needs the batch size is HF's `cls_token.expand(batch, -1, -1)` before
the concatenation with the patch tokens (Shape -> Concat -> Expand in ONNX). onnx2tf cannot
convert that with a free batch (its layout inference mis-shapes the position-embedding Add), so
the TF artifacts used to be batch-1 only. `batch_free_embeddings` rewrites the step as an
identity: pad the patch tokens with one zero token in front, add a constant holding the [CLS]
token in row 0 (zeros elsewhere), then the position embeddings. The graph then has no Shape op,
every artifact derived from it takes any batch, and each element sees the same additions in the
same order as in HF's forward (x + 0 is exact), so the logits agree with HF's within float
rounding (tested).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
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


@contextlib.contextmanager
def batch_free_embeddings(model: torch.nn.Module) -> Iterator[bool]:
    """Temporarily replace the [CLS] expand + concat by a pad + constant add (see module docstring).

    Yields whether the rewrite applies: embeddings with exactly one [CLS] token and a position table
    for exactly the patches plus it (ViT, ViT-MSN). Others (DeiT's distillation token, DINOv2's
    interpolated positions and registers, BEiT's relative positions) are exported as they are.
    """
    embeddings = getattr(getattr(model, model.base_model_prefix, model), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    cls_token = getattr(embeddings, "cls_token", None)
    patches = getattr(getattr(embeddings, "patch_embeddings", None), "num_patches", None)
    fits = (isinstance(table, torch.nn.Parameter) and isinstance(cls_token, torch.nn.Parameter) and patches
            and tuple(cls_token.shape[:2]) == (1, 1) and tuple(table.shape[:2]) == (1, patches + 1)
            and not any(hasattr(embeddings, extra) for extra in ("distillation_token", "register_tokens")))
    if not fits:
        yield False
        return

    # (tokens + cls_row) + positions: every element sees the same additions, in the same order, as
    # HF's concat + add (x + 0 is exact), so fp16 exports round exactly as before. Summing cls_row
    # and the positions into one table rounded differently in fp16 (a tiny model's q90 |dlogit|
    # grew from under to over the fp16 budget); adding them to each other inside the graph made
    # ORT warn that it cannot fold an fp16 Add of two constants.
    with torch.no_grad():
        cls_row = torch.nn.functional.pad(cls_token, (0, 0, 0, table.shape[1] - 1)).detach().clone()

    def forward(pixel_values, bool_masked_pos=None, interpolate_pos_encoding=False):
        tokens = torch.nn.functional.pad(embeddings.patch_embeddings(pixel_values), (0, 0, 1, 0))
        return embeddings.dropout((tokens + cls_row) + embeddings.position_embeddings)

    embeddings.forward = forward
    try:
        yield True
    finally:
        del embeddings.forward  # back to the class's method


def export_onnx(model: torch.nn.Module, config: ExportConfig, height: int, width: int, path: Path, opset: int) -> Path:
    import onnx

    model.config._attn_implementation = "eager"  # plain MatMul/Softmax: what ORT's fusions and onnx2tf expect
    example = torch.zeros(2, model.config.num_channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=1024)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" noise
    with warnings.catch_warnings(), torch.inference_mode(), batch_free_embeddings(model):
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

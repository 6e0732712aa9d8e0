"""Shared fixtures: a tiny random ViT checkpoint (fast), and sample images built on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_UTKFACE = REPO.parent / "shared" / "data" / "utkface"
needs_utkface = pytest.mark.skipif(
    not SHARED_UTKFACE.is_dir(),
    reason=f"UTKFace data not found at {SHARED_UTKFACE} (it ships beside the repo in CI, not in a fresh clone)",
)


# (config class, model class, extra config) of a tiny checkpoint per claimed model type; DINOv2's
# position table is built for 48 px so that a 32 px export interpolates it (as real DINOv2 checkpoints
# do: 518 px table, 224 px crops).
TINY_TYPES = {
    "vit": ("ViTConfig", "ViTForImageClassification", {}),
    "vit_msn": ("ViTMSNConfig", "ViTMSNForImageClassification", {}),
    "deit": ("DeiTConfig", "DeiTForImageClassification", {}),
    "deit-distilled": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", {}),
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification", {"image_size": 48, "mlp_ratio": 2}),
    "dinov2_with_registers": (
        "Dinov2WithRegistersConfig",
        "Dinov2WithRegistersForImageClassification",
        {"image_size": 48, "mlp_ratio": 2, "num_register_tokens": 2},
    ),
    "beit": ("BeitConfig", "BeitForImageClassification", {}),
    "data2vec-vision": (
        "Data2VecVisionConfig",
        "Data2VecVisionForImageClassification",
        {"use_absolute_position_embeddings": True, "use_mean_pooling": False},
    ),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def make_tiny(
    variant: str,
    directory: Path,
    *,
    image_size: int = 32,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    seed: int = 0,
    labels: tuple[str, ...] = ("apple", "banana", "cherry"),
) -> Path:
    """A random classifier of one claimed type (`TINY_TYPES`; patch 8, width 32, 2 layers) in HF format with
    SHA256SUMS, saved with `save_pretrained` as a user's checkpoint would be."""
    import torch
    import transformers

    from vitgender.checkpoint import write_sha256sums
    from vitgender.preprocess import PreprocessConfig

    config_name, class_name, extra = TINY_TYPES[variant]
    torch.manual_seed(seed)
    sizes = {
        "image_size": image_size,
        "patch_size": 8,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    config = getattr(transformers, config_name)(
        **{**sizes, **extra},
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        architectures=[class_name],
    )
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():  # make the logits spread, so ranking and flips are meaningful
        for name, module in model.named_modules():
            if name.endswith("classifier") and isinstance(module, torch.nn.Linear):
                module.weight.mul_(20)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    pre = PreprocessConfig(height=image_size, width=image_size, image_mean=tuple(mean), image_std=tuple(std))
    (directory / "preprocessor_config.json").write_text(json.dumps(pre.to_dict()))
    write_sha256sums(directory)
    return directory


def make_tiny_vit(directory: Path, *, labels: tuple[str, ...] = ("female", "male"), **options) -> Path:
    """A random ViTForImageClassification (patch 8, 2 layers) with the default model's two labels."""
    return make_tiny("vit", directory, labels=labels, **options)


@pytest.fixture(scope="module", autouse=True)
def _one_ray_cluster_at_a_time(request):
    """Modules marked `ray` start and stop Ray clusters of their own; pytest-xdist's workers (addopts) take
    them one at a time, so two never share the machine's cores or race on Ray's session files."""
    if request.node.get_closest_marker("ray") is None:
        yield
        return
    import tempfile

    from filelock import FileLock

    with FileLock(Path(tempfile.gettempdir()) / "vitgender-tests-ray.lock"):
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny") / "tiny-vit")


HOSTILE_LABEL = '<img src=x onerror="window.pwned=1">'


@pytest.fixture(scope="session")
def hostile_model(tmp_path_factory) -> Path:
    """Labels are attacker-controlled text: this checkpoint's id2label carries markup."""
    return make_tiny_vit(
        tmp_path_factory.mktemp("hostile") / "hostile-vit", labels=(HOSTILE_LABEL, "<script>x</script>")
    )


def pickled_copy(model: Path, destination: Path) -> Path:
    """A copy of `model` with its weights as pytorch_model.bin (what older HF checkpoints ship)."""
    import shutil

    import torch

    from vitgender.checkpoint import load_model

    shutil.copytree(model, destination)
    state = load_model(destination).state_dict()
    (destination / "model.safetensors").unlink()
    (destination / "SHA256SUMS").unlink()
    torch.save(state, destination / "pytorch_model.bin")
    return destination


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`vitgender ARGS` in this process: (exit code, stdout, stderr)."""
    import sys

    from vitgender.cli import main

    monkeypatch.setattr(sys, "argv", ["vitgender", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def random_image(seed: int, size=(48, 40), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


@pytest.fixture
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        random_image(i).save(folder / f"img{i}.jpg", quality=95)
    random_image(9, mode="RGBA").save(folder / "alpha.png")
    return folder


@pytest.fixture(scope="session")
def race5_model() -> Path:
    """A trained 5-label model (White/Black/Asian/Indian/Other) on the bundled backbone (tests/zoo.py)."""
    if not SHARED_UTKFACE.is_dir():
        pytest.skip(f"UTKFace data not found at {SHARED_UTKFACE} (needed to train the test model)")
    from zoo import trained_model

    return trained_model("race5")


@pytest.fixture(scope="session")
def age3_model() -> Path:
    """A trained 3-label age-bucket model (0-19 / 20-49 / 50+) on the bundled backbone (tests/zoo.py)."""
    if not SHARED_UTKFACE.is_dir():
        pytest.skip(f"UTKFace data not found at {SHARED_UTKFACE} (needed to train the test model)")
    from zoo import trained_model

    return trained_model("age3")

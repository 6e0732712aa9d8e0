"""Trained multi-class models that are not the default one: new heads on the bundled backbone.

The default model is one user among many. A 2-label model whose logits stay within +-1.6 hides
what a user's 5-class model with logits of +-8 and small decision margins shows (budgets that do
not transfer, int8 recipes that lose agreement, "gender" words in reports). These two models are
trained here, from UTKFace faces (non-commercial research licence), so every test and benchmark
can use the same ones:

- `race5`: labels White, Black, Asian, Indian, Other (the name's race field);
- `age3`: labels 0-19, 20-49, 50+ (age buckets from the name's age field).

Each is the default model's backbone with a linear head fitted on frozen [CLS] features of
`TRAIN_PER_CLASS` training-split faces per class (the content-hash split of `vitgender.data`), so
held-out faces come from the validation split and never touched the head. Built once and cached
under ~/.cache/vitgender-tests (keyed by the recipe and the default model's weights); a build
takes about a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
UTKFACE = REPO.parent / "shared" / "data" / "utkface"
DEFAULT_MODEL = REPO / "vitgender" / "default_model"
CACHE = Path(os.environ.get("VITGENDER_TEST_CACHE", Path.home() / ".cache" / "vitgender-tests"))
RECIPE_VERSION = 2
TRAIN_PER_CLASS = 120


def _age3(age: int) -> str:
    return "0-19" if age < 20 else "20-49" if age < 50 else "50+"


# task -> (labels, how a parsed UTKFace sample maps to one of them)
TASKS: dict[str, tuple[tuple[str, ...], Callable[[dict], str]]] = {
    "race5": (("White", "Black", "Asian", "Indian", "Other"), lambda groups: groups["race"]),
    "age3": (("0-19", "20-49", "50+"), lambda groups: _age3(int(groups["age"]))),
}


def faces_by_label(task: str, split: str) -> dict[str, list[Path]]:
    """UTKFace faces of one split, grouped by the task's label, in a fixed (name) order."""
    from vitgender.data import split_of, utkface_samples

    labels, label_of = TASKS[task]
    with warnings.catch_warnings():  # the malformed names are counted by utkface_samples itself
        warnings.simplefilter("ignore")
        samples, _ = utkface_samples(UTKFACE)
    grouped: dict[str, list[Path]] = {label: [] for label in labels}
    for sample in samples:  # utkface_samples lists the folder in name order
        if split_of(sample.path) == split:
            grouped[label_of(sample.groups)].append(sample.path)
    return grouped


def held_out_folder(task: str, destination: Path, per_class: int, *, offset: int = 0) -> Path:
    """Class folders (`destination/<label>/face.jpg`) of validation-split faces the head never saw.

    `offset` skips the first faces of each class, so two calls give disjoint sets.
    """
    for label, paths in faces_by_label(task, "val").items():
        chosen = paths[offset : offset + per_class]
        if len(chosen) < per_class:
            raise ValueError(f"{task}: only {len(chosen)} held-out faces of {label!r} after offset {offset}")
        folder = destination / label.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for path in chosen:
            shutil.copyfile(path, folder / path.name)
    return destination


def _cache_key(task: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([task, RECIPE_VERSION, TRAIN_PER_CLASS]).encode())
    digest.update((DEFAULT_MODEL / "SHA256SUMS").read_bytes())
    return digest.hexdigest()[:16]


def _cls_features(model, paths: list[Path], preprocess) -> np.ndarray:
    """The classifier's input (final-LayerNorm [CLS] token) for each image, batch by batch."""
    import torch
    from PIL import Image

    from vitgender.preprocess import Preprocessor

    processor = Preprocessor(preprocess)
    features = []
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            images = [Image.open(p).convert("RGB") for p in paths[start : start + 32]]
            pixels = torch.from_numpy(processor(images))
            hidden = model.vit(pixel_values=pixels).last_hidden_state
            features.append(hidden[:, 0, :].numpy())
    return np.concatenate(features)


def _fit_head(features: np.ndarray, targets: np.ndarray, classes: int, seed: int = 0):
    """Multinomial logistic regression (full batch, L2): the linear probe users train first."""
    import torch

    torch.manual_seed(seed)
    x, y = torch.from_numpy(features), torch.from_numpy(targets)
    head = torch.nn.Linear(x.shape[1], classes)
    optimiser = torch.optim.LBFGS(head.parameters(), lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + 1e-2 * head.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return head


def _build(task: str, directory: Path) -> None:
    import torch
    from transformers import ViTForImageClassification
    from transformers.utils import logging as hf_logging

    from vitgender.checkpoint import open_checkpoint, write_sha256sums

    labels, _ = TASKS[task]
    hf_logging.set_verbosity_error()  # the new head's "newly initialized" notice is expected here
    checkpoint = open_checkpoint(DEFAULT_MODEL)
    model = ViTForImageClassification.from_pretrained(
        DEFAULT_MODEL,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
        torch_dtype=torch.float32,
    ).eval()
    grouped = faces_by_label(task, "train")
    paths, targets = [], []
    for index, label in enumerate(labels):
        paths += grouped[label][:TRAIN_PER_CLASS]
        targets += [index] * len(grouped[label][:TRAIN_PER_CLASS])
    features = _cls_features(model, paths, checkpoint.preprocess)
    head = _fit_head(features, np.asarray(targets, dtype=np.int64), len(labels))
    with torch.no_grad():
        model.classifier.weight.copy_(head.weight)
        model.classifier.bias.copy_(head.bias)
    model.save_pretrained(directory, safe_serialization=True)
    shutil.copyfile(DEFAULT_MODEL / "preprocessor_config.json", directory / "preprocessor_config.json")
    (directory / "README.md").write_text(
        f"# Test model `{task}`\n\nThe vitgender default model's backbone with a linear head for the labels "
        f"{', '.join(labels)}, fitted on {TRAIN_PER_CLASS} UTKFace training-split faces per label by "
        "tests/zoo.py. UTKFace is licensed for non-commercial research only. For tests, not for use.\n"
    )
    write_sha256sums(directory)


def trained_model(task: str) -> Path:
    """The cached checkpoint for `task` ('race5' or 'age3'), built on first use."""
    if not UTKFACE.is_dir():
        raise FileNotFoundError(f"UTKFace faces not found at {UTKFACE}")
    target = CACHE / "zoo" / f"{task}-{_cache_key(task)}"
    if (target / "SHA256SUMS").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=target.parent))
    try:
        _build(task, scratch)
        try:
            scratch.rename(target)
        except OSError:  # another process finished the same build first
            if not (target / "SHA256SUMS").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target

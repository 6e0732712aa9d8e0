"""The fine-tune recipe behind the default model (and `vitgender train` on a user's data).

Full fine-tuning of every block, because frozen DINOv2 features top out near 88% on UTKFace
(measured: logistic regression / RBF-SVM on frozen CLS+mean features) while the model card
bar is 92%. Images are decoded and resized once (uint8, in RAM), augmentation runs on the
training device (flip, random scale/translate/rotate, brightness/contrast), so a CPU-only
machine and an accelerator run the same code. A checkpoint is written atomically after every
epoch and `resume=True` continues from it.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vitgender.preprocess import PreprocessConfig


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-4
    head_lr: float = 1e-3
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    warmup_fraction: float = 0.08
    label_smoothing: float = 0.1
    seed: int = 0
    # Default model v2 recipe (issue #21): draw training faces balanced over these groups, and keep
    # this fraction of the training split out of training to fit a temperature on (see run_training).
    balance: tuple[str, ...] = ()
    holdout_fraction: float = 0.0


def _param_groups(model, cfg: TrainConfig) -> list[dict]:
    """Layer-wise learning-rate decay: early blocks move least, the head most."""
    layers = model.config.num_hidden_layers
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if name.startswith("classifier"):
            lr = cfg.head_lr
        else:
            depth = 0 if ".embeddings." in name else layers + 1
            if ".encoder.layer." in name:
                depth = int(name.split(".encoder.layer.")[1].split(".")[0]) + 1
            lr = cfg.lr * cfg.layer_decay ** (layers + 1 - depth)
        decay = 0.0 if param.ndim == 1 or "position_embeddings" in name or "cls_token" in name else cfg.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": p, "lr": lr, "base_lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1], randomly flipped, zoomed, shifted, rotated, lit."""
    x = batch.permute(0, 3, 1, 2).float() / 255.0
    n, device = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device="cpu").to(device) * (high - low) + low

    scale = uniform(0.8, 1.0)
    angle = uniform(-0.17, 0.17)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(device)
    tx, ty = uniform(-1, 1) * (1 - scale), uniform(-1, 1) * (1 - scale)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness = uniform(0.8, 1.2).view(n, 1, 1, 1)
    contrast = uniform(0.8, 1.2).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * brightness).clamp(0, 1)


def normalize(x: torch.Tensor, pre: PreprocessConfig) -> torch.Tensor:
    mean = torch.tensor(pre.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.image_std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict(
    model, images: torch.Tensor, pre: PreprocessConfig, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Logits for uint8 NHWC images, with exactly the inference normalisation."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).permute(0, 3, 1, 2).float() / 255.0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(pixel_values=normalize(x, pre)).logits.float().cpu())
    return torch.cat(out)


def _save_atomic(obj: dict, path: Path) -> None:
    partial = path.with_suffix(".partial")
    torch.save(obj, partial)
    partial.replace(path)


def finetune(
    model,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    pre: PreprocessConfig,
    cfg: TrainConfig,
    run_dir: Path,
    device: torch.device,
    resume: bool = True,
    progress: Callable[[str], None] = print,
    sample_weights: torch.Tensor | None = None,
    val_name: str = "val",
) -> list[dict]:
    """Train `model` in place; returns the per-epoch log (also written to run_dir/log.json).

    With `sample_weights`, each epoch draws as many images as the set holds, with replacement,
    in proportion to the weights (e.g. `sampling.balanced_weights`), instead of a permutation.
    `val` is scored after every epoch and logged as `<val_name>_accuracy`. Resuming refuses a
    checkpoint written with other sampling, holdout or seed: its epochs were drawn differently.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model.to(device)
    images, labels = train
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_fraction * cfg.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), betas=(0.9, 0.999))
    generator = torch.Generator().manual_seed(cfg.seed)
    start_epoch, log = 0, []
    checkpoint = run_dir / "checkpoint.pt"
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        saved = state.get("config", {})
        for name in ("balance", "holdout_fraction", "seed"):
            was, now = saved.get(name, getattr(TrainConfig, name)), getattr(cfg, name)
            if (list(was) if isinstance(was, (list, tuple)) else was) != (list(now) if isinstance(now, tuple) else now):
                from vitgender.errors import UsageError

                raise UsageError(
                    str(checkpoint),
                    f"was trained with {name}={was!r}, not {now!r}: resume with the same "
                    "option, or start over with --no-resume",
                )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_epoch, log = state["epoch"], state["log"]
        progress(f"resumed from {checkpoint} after epoch {start_epoch}")
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if sample_weights is None:
            order = torch.randperm(len(images), generator=generator)
        else:
            order = torch.multinomial(sample_weights, len(images), replacement=True, generator=generator)
        began, seen, loss_sum = time.time(), 0, 0.0
        for start in range(0, len(order), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            factor = (
                step / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            )
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            x = normalize(augment(images[index].to(device, non_blocking=True), generator), pre)
            y = labels[index].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(pixel_values=x).logits.float()
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            seen += len(index)
            loss_sum += float(loss.detach()) * len(index)
        entry = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "seconds": round(time.time() - began, 1)}
        if val is not None:
            entry[f"{val_name}_accuracy"] = float(
                (predict(model, val[0], pre, device).argmax(1) == val[1]).float().mean()
            )
        log.append(entry)
        progress(json.dumps(entry))
        _save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "epoch": epoch + 1,
                "log": log,
                "config": asdict(cfg),
            },
            checkpoint,
        )
    (run_dir / "log.json").write_text(json.dumps({"config": asdict(cfg), "epochs": log}, indent=2))
    return log

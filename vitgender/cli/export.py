"""`vitgender export`: a checkpoint -> the artifacts the format registry describes, with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vitgender.cli.app import app
from vitgender.cli.common import ALPHA_HELP, MODEL_HELP, AlphaPolicy, only_with
from vitgender.exporters.options import AUTO_PLANNED, CALIBRATION_LIMIT, CALIBRATION_METHODS
from vitgender.exporters.quantize import STATIC_PRESETS
from vitgender.formats import formats_help


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(None, metavar="MODEL", help=MODEL_HELP),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", metavar="DIR", help="Output directory (default artifacts/<model-name>/)."
    ),
    formats: str = typer.Option("onnx", "--formats", metavar="FORMATS", help=formats_help()),
    calibration: Optional[Path] = typer.Option(
        None,
        metavar="DIR",
        help="Image folder for int8 calibration (default: the bundled " "64 UTKFace training-split faces).",
    ),
    calibration_limit: int = typer.Option(
        CALIBRATION_LIMIT,
        metavar="N",
        help="Calibrate on at most N images (at least 16); a larger folder is sampled evenly over its names. "
        "More images make the export's int8 check and 'auto' plan slower.",
    ),
    calibration_method: str = typer.Option(
        "minmax", metavar="METHOD", help=f"ORT static int8 calibration: {', '.join(CALIBRATION_METHODS)}."
    ),
    quant_preset: str = typer.Option(
        "safe",
        metavar="PRESET",
        help="ORT static int8 (" + ", ".join(STATIC_PRESETS) + "): "
        "'safe' quantizes the weight MatMuls and the patch Conv; 'auto' also the attention "
        "MatMuls, then keeps the most sensitive blocks float until --quant-target is met on "
        "the calibration images; 'full' quantizes every op ORT can (collapses on ViTs). "
        "'auto' also plans the other calibrated int8 artifacts: tflite-int8 (each candidate re-quantized and run "
        "by LiteRT), executorch-int8 (its PT2E graph run in PyTorch), executorch-int8-dynamic (its arithmetic "
        "simulated).",
    ),
    quant_target: str = typer.Option(
        "agreement=0.99",
        metavar="TARGET",
        help="What every calibrated int8 artifact should reach against PyTorch on the calibration images: "
        "agreement=A (share of images keeping the top-1 label) or q90=D (0.9 quantile of |logit difference| "
        "at most D, no flip). The export reports each artifact against it; 'auto' keeps units float to meet it.",
    ),
    quant_max_float: int = typer.Option(
        4, metavar="N", min=0, help="'auto' preset: keep at most N units (a block's attention or MLP) float."
    ),
    quant_strict: bool = typer.Option(
        False,
        "--quant-strict",
        help="Exit 1 when a calibrated int8 artifact misses --quant-target (it is still written).",
    ),
    smoothquant: Optional[float] = typer.Option(
        None,
        metavar="ALPHA",
        help="Calibrated int8: migrate activation outliers into the weights (SmoothQuant, folded into the "
        "LayerNorms and value projections, float-exact) with this alpha for every toolchain; 0 turns it off. "
        "Default: as measured per artifact (0.5 for onnx-int8-static and executorch-int8-dynamic, off for "
        "tflite-int8 and executorch-int8).",
    ),
    quant_float_head: Optional[bool] = typer.Option(
        None,
        "--quant-float-head/--no-quant-float-head",
        help="Calibrated int8: keep the classification head float (it reads the final LayerNorm's outliers). "
        "Default: float for every toolchain.",
    ),
    int8_attention: bool = typer.Option(
        False,
        "--int8-attention",
        help="pt2-int8: quantize the attention's products too (q, k, v, probabilities), which the inductor "
        "runtime runs as torchao's fused int8 attention kernel (vitgender[inductor]): 1.2-1.8x faster on "
        "an Intel AMX CPU, about 0.1 pt less agreement with PyTorch on the default model, up to 3 pt on a "
        "close-margin 5-label model.",
    ),
    opset: int = typer.Option(
        20, metavar="N", min=17, help="ONNX opset (20+ keeps GELU a single op, which the TFLite path needs)."
    ),
    tflite_int8_io: bool = typer.Option(False, help="Full-integer TFLite takes and returns int8 instead of float."),
    alpha: Optional[AlphaPolicy] = typer.Option(
        None,
        "--alpha",
        metavar="POLICY",
        help="The alpha policy each artifact's "
        "sidecar records for runners, servers and apps to apply. " + ALPHA_HELP,
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an earlier export in OUT (of any model). "
        "Without it, an export of the same checkpoint in OUT is merged (formats built now "
        "replace theirs, the rest is kept). A folder that is not an export is never "
        "replaced (see docs/output-folders.md).",
    ),
) -> None:
    """Export a checkpoint to ONNX / ORT-quantized / SavedModel / TFLite / web artifacts with a manifest."""
    alpha = alpha.value if alpha is not None else None
    from vitgender.exporters import ExportOptions, main_export
    from vitgender.exporters.int8_check import summary_line
    from vitgender.formats import parse_formats
    from vitgender.manifest import read_manifest

    names = {spec.name for spec in parse_formats(formats)}
    only_with(
        ctx,
        any(spec.needs_calibration for spec in parse_formats(formats)),
        "an int8 format that calibrates (onnx-int8-static, tflite-int8, executorch-int8-dynamic, executorch-int8)",
        "calibration",
        "calibration_limit",
        "smoothquant",
        "quant_float_head",
        "quant_target",
        "quant_strict",
    )
    only_with(ctx, "onnx-int8-static" in names, "onnx-int8-static (ORT static int8)", "calibration_method")
    planned = bool(names & set(AUTO_PLANNED))
    # 'safe' and 'full' are ORT's node sets; for the other calibrated int8 artifacts only 'auto' means anything
    only_with(
        ctx,
        "onnx-int8-static" in names or (planned and quant_preset == "auto"),
        f"onnx-int8-static, or 'auto' with {' or '.join(AUTO_PLANNED)}",
        "quant_preset",
    )
    only_with(ctx, planned and quant_preset == "auto", "--quant-preset auto", "quant_max_float")
    only_with(ctx, "tflite-int8" in names, "tflite-int8 (full-integer TFLite)", "tflite_int8_io")
    only_with(ctx, "pt2-int8" in names, "pt2-int8 (static int8 for Inductor)", "int8_attention")

    options = ExportOptions(
        opset=opset,
        calibration_method=calibration_method,
        calibration_limit=calibration_limit,
        quant_preset=quant_preset,
        quant_target=quant_target,
        quant_max_float=quant_max_float,
        quant_strict=quant_strict,
        tflite_int8_io=tflite_int8_io,
        smoothquant=smoothquant,
        float_head=quant_float_head,
        alpha=alpha,
        int8_attention=int8_attention,
    )
    if calibration is not None:
        options.calibration = calibration
    written = main_export(
        model,
        out,
        formats,
        options,
        on_step=lambda name: typer.echo(f"[export] {name}", err=True),
        overwrite=overwrite,
        on_warning=lambda line: typer.echo(f"vitgender: warning: {line}", err=True),
    )
    for entry in read_manifest(written)["artifacts"]:
        typer.echo(
            f"{entry['name']:<20} {entry['precision']:<13} {entry['bytes'] / 2**20:8.1f} MiB "
            f"{entry['seconds']:7.1f} s  {entry['path']}"
        )
    typer.echo(f"wrote {written}/manifest.json")
    missed = False
    for entry in read_manifest(written)["artifacts"]:
        check = (entry.get("quantization") or {}).get("check")
        if check and entry["name"] in names:  # built now, not carried over from an earlier export
            missed |= not check["met"]
            typer.echo(summary_line(entry["name"], check, entry["quantization"]["fp32_images_per_second"]), err=True)
    if missed and quant_strict:
        raise typer.Exit(1)

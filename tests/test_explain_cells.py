"""`evaluate --explain N`: per race x gender cell, the mean map of right and of wrong answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "vitgender.cli"]
REFERENCE = Path(__file__).resolve().parent.parent / "vitgender" / "reference" / "utkface-val-50"


def test_evaluate_explain_adds_cell_maps_to_json_and_html(tiny_model, tmp_path):
    report_path, page = tmp_path / "eval.json", tmp_path / "eval.html"
    result = subprocess.run(
        [
            *CLI,
            "evaluate",
            str(tiny_model),
            "--data",
            str(REFERENCE),
            "--explain",
            "2",
            "--explain-method",
            "rollout",
            "--json",
            str(report_path),
            "--html",
            str(page),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    explain = report["explain"]
    assert explain["method"] == "rollout" and explain["per_cell"] == 2
    predicted = {(r["group"]["race"], r["group"]["gender"]): r["n"] for r in report["groups"]["genderxrace"]}
    cells = {(c["group"]["race"], c["group"]["gender"]): c for c in explain["cells"]}
    assert cells.keys() == predicted.keys()  # every cell of the fairness table, no other
    for key, cell in cells.items():
        assert 0 <= cell["correct"]["n"] <= 2 and 0 <= cell["wrong"]["n"] <= 2
        assert cell["correct"]["n"] + cell["wrong"]["n"] >= min(1, predicted[key])
        for side in ("correct", "wrong"):
            if cell[side]["n"]:
                heat = np.asarray(cell[side]["map"])
                assert heat.ndim == 2 and abs(heat.sum() - 1) < 1e-3 and (heat >= 0).all()
            else:
                assert cell[side]["map"] is None
    assert "what decisions rest on" in page.read_text()


def test_evaluate_explain_refuses_exported_artifacts(tiny_model, tmp_path):
    from vitgender.exporters import main_export

    exported = main_export(tiny_model, tmp_path / "export", "onnx")
    result = subprocess.run(
        [*CLI, "evaluate", str(exported / "model.onnx"), "--data", str(REFERENCE), "--explain", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "PyTorch model" in result.stderr and "Traceback" not in result.stderr

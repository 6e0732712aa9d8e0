"""Labels and file names are attacker-controlled text: every report shows them, none executes them."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HOSTILE_LABEL

CLI = [sys.executable, "-m", "vitgender.cli"]
EXAMPLE = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))[0]
HOSTILE_NAME = '"><img src=x onerror=alert(1)>.jpg'
RAW_MARKUP = ("<img src=x", "<script>")


def _no_raw_markup(text: str) -> None:
    for raw in RAW_MARKUP:
        assert raw not in text, raw


def test_evaluate_html_escapes_labels_and_file_names(hostile_model, tmp_path):
    shutil.copy(EXAMPLE, tmp_path / HOSTILE_NAME)
    (tmp_path / f"broken{HOSTILE_NAME}").write_bytes(b"")  # listed under "unreadable", by name
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([("path", "label"), (HOSTILE_NAME, HOSTILE_LABEL), (f"broken{HOSTILE_NAME}", HOSTILE_LABEL)])
    html = tmp_path / "eval.html"
    result = subprocess.run(
        [*CLI, "evaluate", str(hostile_model), "--data", str(tmp_path / "labels.csv"), "--html", str(html)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    page = html.read_text()
    assert "&lt;img src=x onerror=" in page and "broken&quot;&gt;&lt;img" in page  # label and name, as text
    _no_raw_markup(page)


def test_validate_reports_escape_labels_and_file_names(hostile_model, tmp_path):
    pytest.importorskip("onnxruntime", reason="validate needs the export extra")
    from vitgender.exporters import main_export

    export = main_export(hostile_model, tmp_path / "art", "onnx-int8-dynamic")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        shutil.copy(EXAMPLE, images / f"{i}{HOSTILE_NAME}")
    budget = tmp_path / "budget.toml"
    budget.write_text("[int8-dynamic]\nmax_abs_logit_diff = 1e-30\n")  # fail, so the failure text is rendered too
    result = subprocess.run(
        [*CLI, "validate", str(export), "--images", str(images), "--labels", "none", "--budget", str(budget)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    _no_raw_markup((export / "validation" / "report.html").read_text())
    markdown = (export / "validation" / "report.md").read_text()
    assert f"`0{HOSTILE_NAME}`" in markdown  # file names are shown, inside code spans
    _no_raw_markup(re.sub(r"`[^`]*`", "", markdown))  # and nowhere else unescaped

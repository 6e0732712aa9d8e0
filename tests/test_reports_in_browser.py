"""The HTML reports as a person sees them: rendered by headless Chromium, not only parsed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="Debian chromium + chromium-driver not installed (.ci/run installs them)",
)

CLI = [sys.executable, "-m", "vitgender.cli"]
REFERENCE = Path(__file__).resolve().parent.parent / "vitgender" / "reference" / "utkface-val-50"


def _open(page: Path, tmp_path: Path):
    pytest.importorskip("selenium", reason="selenium not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}/chrome"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.get(page.as_uri())
    return driver


def _check_page(driver) -> None:
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert driver.execute_script("return document.querySelectorAll('table').length") >= 1  # summary first
    assert driver.execute_script("return document.querySelectorAll('svg').length") >= 2
    broken = driver.execute_script(
        "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)"
    )
    assert broken == []


def test_validate_report_renders(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime", reason="validate needs the export extra")
    from vitgender.exporters import main_export

    export = main_export(tiny_model, tmp_path / "art", "onnx,onnx-int8-dynamic")
    result = subprocess.run([*CLI, "validate", str(export), "--localize"], capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    driver = _open(export / "validation" / "report.html", tmp_path)
    try:
        _check_page(driver)
        assert driver.execute_script("return document.images.length") >= 5  # thumbnails of the worst faces
        first_table = driver.execute_script("return document.querySelector('table').innerText")
        assert "verdict" in first_table and "onnx-int8-dynamic" in first_table
        assert "cosine" not in driver.page_source  # meaningless with two classes: not shown
    finally:
        driver.quit()


def test_evaluate_report_renders(tiny_model, tmp_path):
    page = tmp_path / "eval.html"
    result = subprocess.run(
        [*CLI, "evaluate", str(tiny_model), "--data", str(REFERENCE), "--min-confidence", "0.6", "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    driver = _open(page, tmp_path)
    try:
        _check_page(driver)
        text = driver.find_element("tag name", "body").text
        for shown in (
            "worst group",
            "answering only at confidence",
            "Confusion matrix",
            "expected calibration error",
            "Unlabelled names",
        ):
            assert shown in text, shown
    finally:
        driver.quit()

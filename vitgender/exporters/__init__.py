"""Exporters: a registry of artifact formats (`formats.py`), their builders, and `main_export`."""

from vitgender.formats import FORMATS, GROUPS, ArtifactSpec, InputLayout, parse_formats
from vitgender.exporters.main_export import CALIBRATION_DIR, ExportError, ExportOptions, main_export

__all__ = ["CALIBRATION_DIR", "FORMATS", "GROUPS", "ArtifactSpec", "ExportError", "ExportOptions", "InputLayout",
           "main_export", "parse_formats"]

"""Exporters: the builders of the artifact formats `vitgender.formats` registers, and `main_export`."""

from vitgender.exporters.main_export import ExportError, main_export
from vitgender.exporters.options import CALIBRATION_DIR, ExportOptions
from vitgender.formats import FORMATS, GROUPS, ArtifactSpec, InputLayout, parse_formats

__all__ = [
    "CALIBRATION_DIR",
    "FORMATS",
    "GROUPS",
    "ArtifactSpec",
    "ExportError",
    "ExportOptions",
    "InputLayout",
    "main_export",
    "parse_formats",
]

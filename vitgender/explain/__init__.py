"""Explanations for ViT classifiers: which patches a prediction rests on, and a test that says so.

- `maps`: attention rollout and gradient-weighted attention rollout (pure functions of a
  model and its pixel_values), plus `average_maps` for per-group summaries.
- `api`: `Explainer`, the Python API beside `Classifier` (whole images or face-first).
- `deletion`: the deletion test behind the choice of default method (docs/explain.md).

Overlay PNGs and the HTML contact sheet of `vitgender explain` are rendered in
`vitgender.reporting.explanations`.
"""

from vitgender.explain.api import DEFAULT_METHOD, ExplainedImage, Explainer, Explanation
from vitgender.explain.maps import METHODS, attribution, average_maps, rollout

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "ExplainedImage",
    "Explainer",
    "Explanation",
    "attribution",
    "average_maps",
    "rollout",
]

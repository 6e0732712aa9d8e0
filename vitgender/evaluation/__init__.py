"""Judging a model on labelled data: accuracy with CIs per label and per group, calibration.

Pure data (`metrics`): nothing here prints or renders; `vitgender evaluate` runs the model and
`vitgender.reporting.evaluation` presents what these functions return.
"""

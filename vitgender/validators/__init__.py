"""Parity metrics, tolerance budgets and quantization proof -> typed check results.

Pure data: nothing here prints or renders; `vitgender.reporting` presents what these return.
"""

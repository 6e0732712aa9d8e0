"""Parity metrics, tolerance budgets, quantization proof and fairness tables -> typed check results.

Pure data: nothing here prints or renders; `vitgender.reporting` presents what these return.
"""

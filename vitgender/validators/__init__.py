"""Parity metrics, tolerance budgets, fairness tables and reports (pure data; reporting separate)."""

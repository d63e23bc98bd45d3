"""Metrics: small functions with their formulas in the docstrings."""

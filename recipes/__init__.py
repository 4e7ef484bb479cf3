"""Reproducible comparisons: `python -m recipes.<name> --preset smoke|cpu|gpu`."""

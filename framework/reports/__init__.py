"""The report each experiment writes from its result tables: figures and a markdown page.

`framework/report.py` holds the primitives (tables with intervals, curves,
examples, settings); a module here composes them for one experiment, so that
its recipe keeps only its methods and steps.
"""

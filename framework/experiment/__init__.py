"""The runtime every recipe uses: run directory, configuration, cells, fits, result tables, resume."""

from framework.experiment.fit import FitSettings, Fitted, RandomState, fit, score_as_is
from framework.experiment.run import Cell, Experiment, Rows

__all__ = ["Cell", "Experiment", "FitSettings", "Fitted", "RandomState", "Rows", "fit", "score_as_is"]

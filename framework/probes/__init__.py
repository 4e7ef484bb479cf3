from framework.probes.logit_lens import LensReading, logit_lens
from framework.probes.metrics import AnswerAccuracy, Rate, StepValidity, wilson_interval

__all__ = ["AnswerAccuracy", "LensReading", "Rate", "StepValidity", "logit_lens", "wilson_interval"]

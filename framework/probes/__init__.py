from framework.probes.metrics import AnswerAccuracy, Rate, StepValidity, wilson_interval

__all__ = ["AnswerAccuracy", "Rate", "StepValidity", "wilson_interval"]

from framework.probes.episode import Episode, Monitor
from framework.probes.linear_probe import LinearProbe, fit_linear_probe, thought_features
from framework.probes.logit_lens import LensReading, logit_lens
from framework.probes.metrics import AnswerAccuracy, Rate, StepValidity, wilson_interval
from framework.probes.monitors import KeywordMonitor, ThoughtProbe, TraceClassifier, fit_trace_classifier
from framework.probes.organism_metrics import (
    AnswerFn,
    ArticulationRate,
    BackdoorSuccessRate,
    CausalCheck,
    FalseTriggerRate,
    MonitorRecall,
    ObfuscationRate,
    Proportion,
    Recovery,
    elicitation_recovery,
    reasoner_answer_fn,
    recall_at_fpr,
    remove_mention_from_trace,
    remove_trigger_from_prompt,
)

__all__ = [
    "AnswerAccuracy",
    "AnswerFn",
    "ArticulationRate",
    "BackdoorSuccessRate",
    "CausalCheck",
    "Episode",
    "FalseTriggerRate",
    "KeywordMonitor",
    "LensReading",
    "LinearProbe",
    "Monitor",
    "MonitorRecall",
    "ObfuscationRate",
    "Proportion",
    "Rate",
    "Recovery",
    "StepValidity",
    "ThoughtProbe",
    "TraceClassifier",
    "elicitation_recovery",
    "fit_linear_probe",
    "fit_trace_classifier",
    "logit_lens",
    "reasoner_answer_fn",
    "recall_at_fpr",
    "remove_mention_from_trace",
    "remove_trigger_from_prompt",
    "thought_features",
    "wilson_interval",
]

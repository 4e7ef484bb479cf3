from framework.probes.backdoor import (
    AnswerFn,
    CausalCheck,
    backdoor_causal_checks,
    backdoor_rates,
    evaluate_backdoor,
    flag_rate,
    probe_backdoor,
    reasoner_answer_fn,
    remove_mention_from_trace,
    remove_trigger_from_prompt,
    score_backdoor,
)
from framework.probes.episode import Episode, Monitor
from framework.probes.linear_probe import LinearProbe, fit_linear_probe, thought_features
from framework.probes.logit_lens import LensReading, logit_lens
from framework.probes.loophole import FixedMonitor, evaluate_loophole, fix_threshold, loophole_rates, score_loophole
from framework.probes.metrics import AnswerAccuracy, Rate, StepValidity
from framework.probes.monitors import KeywordMonitor, ThoughtProbe, TraceClassifier, fit_trace_classifier
from framework.probes.organism_metrics import (
    ArticulationRate,
    BackdoorSuccessRate,
    FalseTriggerRate,
    MonitorRecall,
    ObfuscationRate,
    Proportion,
    Recovery,
    elicitation_recovery,
    recall_at_fpr,
)
from framework.stats import wilson_interval

__all__ = [
    "AnswerAccuracy",
    "AnswerFn",
    "ArticulationRate",
    "BackdoorSuccessRate",
    "CausalCheck",
    "Episode",
    "FalseTriggerRate",
    "FixedMonitor",
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
    "backdoor_causal_checks",
    "backdoor_rates",
    "elicitation_recovery",
    "evaluate_backdoor",
    "evaluate_loophole",
    "fit_linear_probe",
    "fit_trace_classifier",
    "fix_threshold",
    "flag_rate",
    "logit_lens",
    "loophole_rates",
    "probe_backdoor",
    "reasoner_answer_fn",
    "recall_at_fpr",
    "remove_mention_from_trace",
    "remove_trigger_from_prompt",
    "score_backdoor",
    "score_loophole",
    "thought_features",
    "wilson_interval",
]

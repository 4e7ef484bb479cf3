"""One LightningModule per training regime."""

from framework.regimes.dpo import DPO
from framework.regimes.expert_iteration import ExpertIteration
from framework.regimes.sft import SFT

__all__ = ["DPO", "ExpertIteration", "SFT"]

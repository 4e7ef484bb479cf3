"""One LightningModule per training regime."""

from framework.regimes.dpo import DPO
from framework.regimes.expert_iteration import ExpertIteration
from framework.regimes.grpo import GRPO
from framework.regimes.latent_sft import LatentSFT
from framework.regimes.sft import SFT

__all__ = ["DPO", "GRPO", "SFT", "ExpertIteration", "LatentSFT"]

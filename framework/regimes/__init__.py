"""One LightningModule per training regime, on one base, and the policies the RL regimes sample from."""

from framework.regimes.base import OptimizerConfig, Regime
from framework.regimes.dpo import DPO
from framework.regimes.expert_iteration import ExpertIteration
from framework.regimes.grpo import GRPO
from framework.regimes.latent_policy import LatentPolicy
from framework.regimes.latent_sft import LatentSFT
from framework.regimes.policy import Policy, TokenPolicy
from framework.regimes.sft import SFT

__all__ = [
    "DPO", "GRPO", "SFT", "ExpertIteration", "LatentPolicy", "LatentSFT", "OptimizerConfig", "Policy", "Regime",
    "TokenPolicy",
]

"""One LightningModule per training regime."""

from framework.regimes.grpo import GRPO
from framework.regimes.latent_sft import LatentSFT
from framework.regimes.sft import SFT

__all__ = ["GRPO", "SFT", "LatentSFT"]

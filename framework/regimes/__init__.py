"""One LightningModule per training regime."""

from framework.regimes.latent_sft import LatentSFT
from framework.regimes.sft import SFT

__all__ = ["SFT", "LatentSFT"]

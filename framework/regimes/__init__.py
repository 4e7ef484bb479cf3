"""One LightningModule per training regime."""

from framework.regimes.sft import SFT

__all__ = ["SFT"]

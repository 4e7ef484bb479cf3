from framework.rollout.latent import LatentRollout, latent_rollout
from framework.rollout.sampling import SamplingConfig, sample

__all__ = ["LatentRollout", "SamplingConfig", "latent_rollout", "sample"]

from framework.rollout.generate import generate, rollout_latent
from framework.rollout.latent import LatentRollout, latent_rollout
from framework.rollout.sampling import SamplingConfig, sample

__all__ = ["LatentRollout", "SamplingConfig", "generate", "latent_rollout", "rollout_latent", "sample"]

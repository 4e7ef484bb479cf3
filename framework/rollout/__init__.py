from framework.rollout.evaluate import generate_batched, rollout_latent_batched
from framework.rollout.generate import generate, rollout_latent, until_eos
from framework.rollout.latent import LatentRollout, latent_rollout
from framework.rollout.sampling import SamplingConfig, sample

__all__ = [
    "LatentRollout",
    "SamplingConfig",
    "generate",
    "generate_batched",
    "latent_rollout",
    "rollout_latent",
    "rollout_latent_batched",
    "sample",
    "until_eos",
]

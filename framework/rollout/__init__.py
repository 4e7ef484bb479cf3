from framework.rollout.sampling import SamplingConfig, sample

__all__ = ["SamplingConfig", "sample"]

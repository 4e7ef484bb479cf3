from framework.models.backbone import backbone_hidden_states
from framework.models.factory import (
    FAMILIES,
    build_model,
    count_parameters,
    load_pretrained,
    load_tokenizer,
    tiny_config,
)
from framework.models.latent import LatentConfig, LatentProjection, forward_one_position, latent_forward
from framework.models.reasoner import MODES, Generation, Reasoner

__all__ = [
    "FAMILIES",
    "MODES",
    "Generation",
    "LatentConfig",
    "LatentProjection",
    "Reasoner",
    "backbone_hidden_states",
    "build_model",
    "count_parameters",
    "forward_one_position",
    "latent_forward",
    "load_pretrained",
    "load_tokenizer",
    "tiny_config",
]

from framework.models.backbone import backbone_hidden_states
from framework.models.factory import (
    FAMILIES,
    build_model,
    count_parameters,
    load_pretrained,
    load_tokenizer,
    tiny_config,
)
from framework.models.formats import (
    FORMATS,
    CoT,
    Generation,
    Hybrid,
    LatentConfig,
    LatentFormat,
    NoThinking,
    Pause,
    ReasoningFormat,
    format_for,
)
from framework.models.latent import LatentProjection, forward_one_position, latent_forward
from framework.models.reasoner import Reasoner
from framework.models.rendering import RENDERINGS, ChatRendering, CompletionRendering, Rendering, rendering_for

__all__ = [
    "FAMILIES",
    "FORMATS",
    "RENDERINGS",
    "ChatRendering",
    "CoT",
    "CompletionRendering",
    "Generation",
    "Hybrid",
    "LatentConfig",
    "LatentFormat",
    "LatentProjection",
    "NoThinking",
    "Pause",
    "Reasoner",
    "ReasoningFormat",
    "Rendering",
    "backbone_hidden_states",
    "build_model",
    "count_parameters",
    "format_for",
    "forward_one_position",
    "latent_forward",
    "load_pretrained",
    "load_tokenizer",
    "rendering_for",
    "tiny_config",
]

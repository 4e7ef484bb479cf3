from framework.models.factory import FAMILIES, build_model, count_parameters, load_pretrained, tiny_config
from framework.models.reasoner import MODES, Generation, Reasoner

__all__ = ["FAMILIES", "MODES", "Generation", "Reasoner", "build_model", "count_parameters", "load_pretrained", "tiny_config"]

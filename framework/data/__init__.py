"""Examples with roles, their tokenization and masks, file formats and verifiable tasks."""

from framework.data.masks import MaskStrategy, mask_strategy
from framework.data.sample import Example, Role, Segment

__all__ = ["Example", "MaskStrategy", "Role", "Segment", "mask_strategy"]

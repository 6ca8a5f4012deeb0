"""Models (torch only): trunks, the attention registry, WBCNet, baselines and their registry."""
from .attention import ATTENTION_DESCRIPTIONS, ATTENTIONS, create_attention
from .registry import (
    ModelInfo,
    build_from_card,
    card_for,
    create_model,
    get_model_info,
    list_models,
    register_model,
    resolved_attention,
)
from .summary import ModelSummary, count_parameters, summarise
from .weights import parse_backbone_weights, parse_pretrained
from .wbcnet import WBCNet

__all__ = [
    "ATTENTIONS",
    "ATTENTION_DESCRIPTIONS",
    "ModelInfo",
    "ModelSummary",
    "WBCNet",
    "build_from_card",
    "card_for",
    "count_parameters",
    "create_attention",
    "create_model",
    "get_model_info",
    "list_models",
    "parse_backbone_weights",
    "parse_pretrained",
    "register_model",
    "resolved_attention",
    "summarise",
]

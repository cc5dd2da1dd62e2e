"""cogvlm_lite: a small CogVLM-style vision-language chat model with a visual expert in every layer."""

from .model import VisionLanguageModel, build_model, load_model

__all__ = ["VisionLanguageModel", "build_model", "load_model"]
__version__ = "0.1.0"

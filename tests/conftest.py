"""Shared fixtures: tiny random models for the mechanics, the packaged ones for real properties."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config, write_tiny_lm


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_encoder_file(tmp_path_factory):
    """Random weights for timm's tf_efficientnet_lite0 (a 'local weights file')."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = tmp_path_factory.mktemp("encoder") / "lite0-random.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, path)
    return path


@pytest.fixture
def tiny_model(tiny_lm_dir, tiny_encoder_file):
    from cogvlm_lite.model import build_model

    return build_model(tiny_config(tiny_lm_dir, tiny_encoder_file), device="cpu")


@pytest.fixture(scope="session")
def default_model():
    from cogvlm_lite import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def fp32_model():
    """The packaged model decoding through fused fp32 weights (`--decode fp32`, as the README's
    held-out figures were measured): the default path's greedy tokens (test_fastdecode; all 600
    held-out answers of seed 99 too), in 73 s against 126 s for the first 100 of them."""
    from cogvlm_lite import load_model

    return load_model(device="cpu", decode="fp32")

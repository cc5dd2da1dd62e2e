"""The vision-language model: encoder -> adapter -> image tokens in a frozen LM with visual experts.

`load_model()` gives the embedded default (packaged SmolLM2-135M-Instruct and EfficientNet-Lite0,
plus the trained expert in `checkpoints/default`); `load_model(path)` a fine-tuned checkpoint.
A checkpoint directory holds `config.json` (this model's configuration and a fingerprint of the
base models) and `model.safetensors` with only the trainable tensors: adapter, BOI/EOI, experts.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import Adapter, AdapterConfig, resize_positions
from .conversation import (
    IGNORE,
    IMAGE_TOKEN_ID,
    ConversationBuilder,
    as_messages,
    map_questions,
    typed_as_trained,
)
from .decoder import Decoder, num_params
from .expert import ExpertConfig, Route, add_visual_experts, shrink_experts
from .fastdecode import FORMATS, FastDecoder, onednn_bf16
from .generation import GenerationConfig, decode_tokens
from .grounding import check_regions, parse_groundings
from .images import load_image
from .train_config import LARGEST_IMAGE, SMALLEST_IMAGE
from .vision import ImageEncoder, VisionConfig
from .weights import default_lm_dir
from .zoom import ask_on_region_crop, zoom_in

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
DECODE_CHOICES = ("exact",) + FORMATS


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why and what to do."""


@dataclass
class ModelConfig:
    language_model: str = "default"  # "default" (packaged SmolLM2) or a transformers directory
    vision: VisionConfig = field(default_factory=VisionConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    max_length: int = 2048  # context, in tokens, the image included
    system_prompt: str | None = None  # None: the chat template's own default

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        parts = {"vision": VisionConfig, "adapter": AdapterConfig, "expert": ExpertConfig}
        for name, kind in parts.items():
            d[name] = kind(**d.get(name, {}))
        known = {"language_model", "max_length", "system_prompt", *parts}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Output:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None


@dataclass
class Inputs:
    """A batch ready for the decoder: image tokens spliced in, positions and routing set."""

    embeds: torch.Tensor
    position_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None


class VisionLanguageModel(nn.Module):
    """A CogVLM-style model; text tokens run the frozen LM exactly, image tokens its experts."""

    def __init__(self, config: ModelConfig, lm: Decoder, tokenizer, encoder: ImageEncoder):
        super().__init__()
        self.config = config
        self.lm = lm
        self.tokenizer = tokenizer
        self.encoder = encoder
        p = lm.embed_tokens.weight
        self.adapter = Adapter(
            config.adapter, encoder.channels, encoder.grid, lm.config.hidden_size,
            lm.config.intermediate_size, embed_std=float(p.float().std()),
        ).to(p.device, p.dtype)
        add_visual_experts(lm, config.expert)
        self.builder = ConversationBuilder(tokenizer, config.max_length)
        self.stop_ids = {i for i in (tokenizer.eos_token_id,
                                     tokenizer.convert_tokens_to_ids("<|im_end|>")) if i is not None}
        self._lock = threading.Lock()
        self._session: dict | None = None
        self.decode = "exact"
        self._fast: FastDecoder | None = None
        # Chat prompts that hold an image are prefilled under bf16 autocast on a CPU with native
        # bf16 products (about twice as fast; without them bf16 is far slower than fp32);
        # text-only prompts always run in the weights' own precision.
        self.image_prefill_bf16 = onednn_bf16()
        self._bf16_key: tuple | None = None
        self._bf16_weights: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.lm.embed_tokens.weight.device

    def set_decode(self, decode: str) -> None:
        """How generated tokens run: "exact" through the language model's own weights, or
        "fp32", "bf16", "int8", "int4" through fused copies (see `cogvlm_lite.fastdecode`)."""
        if decode not in DECODE_CHOICES:
            raise ValueError(f"decode must be one of {DECODE_CHOICES}, not {decode!r}")
        self._fast = None if decode == "exact" else FastDecoder(self.lm, decode)
        self.decode = decode
        self.reset()

    @property
    def text_decoder(self) -> Decoder | FastDecoder:
        """What decodes generated (text) tokens."""
        return self._fast or self.lm

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.train(False)
        return self

    # ---------------------------------------------------------------- images

    def pixels(self, images) -> torch.Tensor:
        """Images (PIL, path, bytes, or a list of them) -> (B, 3, S, S) in 0..1."""
        if isinstance(images, torch.Tensor):
            return images if images.dim() == 4 else images[None]
        if not isinstance(images, (list, tuple)):
            images = [images]
        return torch.stack([self.encoder.preprocess(load_image(im)) for im in images])

    def image_embeddings(self, images=None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, tokens, width) image tokens, BOI and EOI included, from images or encoder features."""
        if features is None:
            features = self.encoder(self.pixels(images).to(self.device))
        p = self.adapter.linear.weight
        return self.adapter(features.to(p.device, p.dtype), self.lm.embed_tokens.weight)

    # ---------------------------------------------------------------- sequences

    def prepare(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, start_position: int = 0) -> Inputs:
        """Splice image tokens in where `IMAGE_TOKEN_ID` is; one image per row at most.

        Position ids follow CogVLM: BOI one position, all patches the next, EOI the one after.
        Rows that end up shorter are padded on the right (label IGNORE, mask 0).
        """
        embed = self.lm.embed_tokens
        b, t = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        has_image = (input_ids == IMAGE_TOKEN_ID).sum(1)
        if (has_image > 1).any():
            raise ValueError("at most one image per sequence (CogVLM takes one image, first)")
        if int(has_image.sum()) and (image_embeds is None or len(image_embeds) < int(has_image.sum())):
            raise ValueError("input_ids hold an image placeholder but no image was given")
        rows, types, steps, masks, labs = [], [], [], [], []
        k = 0
        for r in range(b):
            ids, m = input_ids[r], mask[r]
            text = embed(ids.clamp(min=0))
            where = (ids == IMAGE_TOKEN_ID).nonzero()
            ones = torch.ones(t, dtype=torch.long, device=ids.device)
            lab = labels[r] if labels is not None else None
            if len(where):
                i = int(where[0])
                img = image_embeds[k].to(text.dtype)
                k += 1
                n = img.shape[0]
                rows.append(torch.cat([text[:i], img, text[i + 1 :]]))
                tt = torch.zeros(t - 1 + n, dtype=torch.long, device=ids.device)
                tt[i : i + n - 1] = 1  # BOI and patches; EOI stays language
                step = torch.cat([ones[:i], ones.new_tensor([1, 1]), ones.new_zeros(n - 3),
                                  ones.new_tensor([1]), ones[i + 1 :]])
                masks.append(torch.cat([m[:i], m.new_ones(n), m[i + 1 :]]))
                if lab is not None:
                    labs.append(torch.cat([lab[:i], lab.new_full((n,), IGNORE), lab[i + 1 :]]))
            else:
                rows.append(text)
                tt = torch.zeros(t, dtype=torch.long, device=ids.device)
                step = ones
                masks.append(m)
                if lab is not None:
                    labs.append(lab)
            types.append(tt)
            steps.append(step)
        length = max(len(x) for x in rows)

        def pad(xs, value):
            return torch.stack([F.pad(x, (0, 0, 0, length - len(x))) if x.dim() == 2
                                else F.pad(x, (0, length - len(x)), value=value) for x in xs])

        m = pad(masks, 0)
        step = pad(steps, 0) * m
        positions = step.cumsum(1) - 1 + start_position
        positions = positions.clamp(min=start_position)
        return Inputs(
            embeds=pad(rows, 0),
            position_ids=positions,
            token_type_ids=pad(types, 0),
            attention_mask=m if attention_mask is not None else None,
            labels=pad(labs, IGNORE) if labels is not None else None,
        )

    def hidden_states(self, inputs: Inputs, cache=None, weights=None) -> torch.Tensor:
        """The language model's final hidden states; `weights` stand in for some of its
        parameters (by name) for this call."""
        route = Route(inputs.token_type_ids) if inputs.token_type_ids.any() else None
        kwargs = dict(inputs_embeds=inputs.embeds, position_ids=inputs.position_ids,
                      attention_mask=inputs.attention_mask, cache=cache, route=route)
        if weights:
            return torch.func.functional_call(self.lm, weights, (), kwargs, strict=False)
        return self.lm(**kwargs)

    def forward(self, input_ids: torch.Tensor, images=None, *, image_features=None,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, loss_reduction: str = "mean") -> Output:
        """Logits like a transformers model; with `labels`, the next-token loss.

        With labels, logits are computed only where there is a label (cheaper) and returned
        flat; `loss_reduction` is "mean" or "sum" over the labelled tokens.
        """
        embeds = None
        if images is not None or image_features is not None:
            embeds = self.image_embeddings(images, image_features)
        inputs = self.prepare(input_ids.to(self.device), embeds,
                              None if attention_mask is None else attention_mask.to(self.device),
                              None if labels is None else labels.to(self.device))
        hidden = self.hidden_states(inputs)
        if labels is None:
            return Output(self.lm.logits(hidden))
        target = inputs.labels[:, 1:]
        keep = target != IGNORE
        logits = self.lm.logits(hidden[:, :-1][keep])
        loss = F.cross_entropy(logits.float(), target[keep], reduction=loss_reduction)
        return Output(logits, loss)

    # ---------------------------------------------------------------- chat

    def chat(self, image, query: str, history: Sequence = (), *, zoom: bool = False,
             **kwargs) -> str:
        """The reply to `query` about `image` (PIL, path, bytes or None), given past turns.

        `zoom`: the reply's boxes (small ones on a crop around them, every look also mirrored,
        those of an object asked for first checked to be there), a count of an object (checked to
        be there), where one object is against another (answered from their boxes), which is the
        smallest or largest (from a description's boxes), or a small region `query` asks about
        (on a crop), are looked at again (`zoom.zoom_in`);
        a small region's crop is asked first, the whole image only where the crop's answer does
        not do.
        """
        zoom = zoom and image is not None
        about_region = zoom and isinstance(query, str) and bool(parse_groundings(query))
        if about_region:
            check_regions(query)  # as `stream_chat` does, before the crop is asked instead
            answer = ask_on_region_crop(self, image, query, **kwargs)
            if answer is not None:
                return answer
        reply = ""
        for text in self.stream_chat(image, query, history, **kwargs):
            reply = text
        return zoom_in(self, image, query, reply, **kwargs) if zoom and not about_region else reply

    def stream_chat(self, image, query: str, history: Sequence = (), *,
                    system: str | None = None, usage: dict | None = None,
                    **generation) -> Iterator[str]:
        """Yield the reply as it grows. `history`: (user, assistant) pairs or message dicts.

        Keyword arguments are `GenerationConfig` fields (temperature, top_p, top_k,
        repetition_penalty, max_new_tokens, seed). A `usage` dict gets ``dropped_turns``, the
        oldest exchanges left out to fit the context, before the first piece of the reply; and,
        once the reply ends (or the caller stops it), ``completion_tokens``, the tokens generated,
        and ``finish_reason``: "length" where `max_new_tokens` cut the reply, else "stop".
        The KV cache of the image and the earlier turns is kept and reused while the next turn
        extends the same conversation. With an
        image, questions are read as typed in training (`conversation.typed_as_trained`: without
        surrounding spaces, runs of spaces made one, a region typed after the final punctuation
        moved before it, capitals and the final punctuation typed where they are missing).
        """
        config = GenerationConfig(**generation)
        usage = {} if usage is None else usage
        encoded = self.encode_prompt(query, history, image=image is not None, system=system,
                                     max_new_tokens=config.max_new_tokens)
        usage["dropped_turns"] = encoded.dropped_turns
        with self._lock:
            yield from self._stream(image, encoded.input_ids, config, usage)

    def encode_prompt(self, query: str, history: Sequence = (), *, image: bool,
                      system: str | None = None, max_new_tokens: int = GenerationConfig.max_new_tokens):
        """The prompt `stream_chat` answers, encoded (`conversation.Encoded`) with room for
        `max_new_tokens`: its ids (the image as one) and `dropped_turns`, the oldest exchanges left
        out to fit the context. ValueError when the question alone cannot fit, when the question,
        system prompt or history is not text, or, about an image, when the question names a
        region that is not one."""
        if query is None:
            raise ValueError("the question must be text, got None")
        messages = as_messages(history, query, system or self.config.system_prompt)
        if image:
            check_regions(query)
            messages = map_questions(messages, typed_as_trained)
        return self.builder.encode(messages, image_tokens=self.adapter.num_tokens if image else 0,
                                   reserve=max_new_tokens)

    def _bf16_prefill(self, has_image: bool) -> bool:
        return (has_image and self.image_prefill_bf16 and self.device.type == "cpu"
                and self.lm.embed_tokens.weight.dtype == torch.float32)

    def _bf16_projections(self) -> dict[str, torch.Tensor]:
        """bf16 copies of the language model's frozen projection weights, made once.

        Autocast casts a weight that needs no gradient again on every call (a sixth of the time
        of a new image's first question); its products with these copies are the very same.
        """
        frozen = {f"{name}.weight": m.weight for name, m in self.lm.layers.named_modules(
            prefix="layers") if isinstance(m, nn.Linear) and not m.weight.requires_grad}
        key = tuple((w.data_ptr(), w._version) for w in frozen.values())
        if self._bf16_key != key:
            self._bf16_weights = {n: w.detach().to(torch.bfloat16) for n, w in frozen.items()}
            self._bf16_key = key
        return self._bf16_weights

    def _stream(self, image, ids: list[int], config: GenerationConfig, usage: dict) -> Iterator[str]:
        image_key, embeds = None, None
        with torch.no_grad():
            if image is not None:
                pixels = self.pixels(image)
                image_key = hashlib.sha1(pixels.numpy().tobytes()).hexdigest()
                session = self._session
                if session is not None and session["image"] == image_key:
                    embeds = session["embeds"]
                else:
                    embeds = self.image_embeddings(pixels)
            n_image = self.adapter.num_tokens if image is not None else 0
            shared = self._shared_length(ids)
            cache, done = self._reuse(image_key, ids, shared)
            self._session = None  # until the prefill is whole: Ctrl-C may stop it midway
            cache.ensure(len(ids) + max(n_image - 1, 0) + config.max_new_tokens)
            # The system prompt and the image are a chunk of their own: how a chunk rounds
            # depends on its length, and their keys and values serve every later question.
            cuts = [done, shared, len(ids)] if done < shared else [done, len(ids)]
            bf16 = self._bf16_prefill(image is not None)
            weights = self._bf16_projections() if bf16 else None
            # Off: leave any autocast the caller runs under (training's evaluation) as it is.
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                for start, stop in itertools.pairwise(cuts):
                    chunk = torch.tensor([ids[start:stop]], device=self.device)
                    inputs = self.prepare(chunk, embeds,
                                          start_position=self._position(ids, start, n_image))
                    hidden = self.hidden_states(inputs, cache=cache, weights=weights)[0, -1]
            last_logits = self.lm.logits(hidden.to(self.lm.embed_tokens.weight.dtype))
        next_position = int(inputs.position_ids[0, -1]) + 1
        self._session = session = {"image": image_key, "embeds": embeds, "ids": ids,
                                   "prompt": len(ids), "cache": cache}
        generated: list[int] = []
        text = ""
        try:
            for token in decode_tokens(self.text_decoder, cache, last_logits, next_position, config,
                                       self.stop_ids, previous=ids):
                if token in self.stop_ids:
                    break
                generated.append(token)
                new = self.tokenizer.decode(generated, skip_special_tokens=True)
                if new != text and not new.endswith("\ufffd"):
                    text = new
                    yield text
        finally:
            # Also when the caller stops early: the cache holds at least the prompt and every
            # generated token but the newest.
            session["ids"] = ids + generated[:-1]
            usage["completion_tokens"] = len(generated)
            usage["finish_reason"] = "length" if len(generated) >= config.max_new_tokens else "stop"

    def reset(self) -> None:
        """Forget the cached conversation."""
        self._session = None

    def _reuse(self, image_key, ids: list[int], shared: int):
        """A KV cache holding the reusable prefix of `ids`, and that prefix's length.

        A conversation that goes on reuses all it shares with the cached one; any other (a new
        question, the same one again) only the first `shared` ids, the system prompt and the
        image, so its answer is the one it gets when asked first.
        """
        s = self._session
        if s is None or s["image"] != image_key:
            return self.lm.new_cache(1, 256), 0
        old = s["ids"]
        n = 0
        for a, b in zip(old, ids, strict=False):
            if a != b:
                break
            n += 1
        if n < s["prompt"] or len(ids) == s["prompt"]:  # not a continuation
            n = min(n, shared)
        n = min(n, len(ids) - 1)  # always recompute the last prompt token for its logits
        cache = s["cache"]
        n_image = self.adapter.num_tokens if image_key is not None else 0
        cache.crop(self._cache_length(ids[:n], n_image))
        return cache, n

    @staticmethod
    def _shared_length(ids: list[int]) -> int:
        """How many ids every question about the same image starts with: up to the image."""
        return ids.index(IMAGE_TOKEN_ID) + 1 if IMAGE_TOKEN_ID in ids else 0

    @staticmethod
    def _cache_length(ids: list[int], n_image: int) -> int:
        return len(ids) + (n_image - 1 if IMAGE_TOKEN_ID in ids else 0)

    @staticmethod
    def _position(ids: list[int], index: int, n_image: int) -> int:
        """Rotary position of token `index`: the image takes 3 positions for its one id."""
        if n_image and IMAGE_TOKEN_ID in ids[:index]:
            return index + 2
        return index

    # ---------------------------------------------------------------- checkpoints

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter, BOI/EOI and experts: what a checkpoint holds."""
        return {k: v for k, v in self.state_dict().items() if is_trainable_key(k)}

    def fingerprint(self) -> dict:
        """Identifies the base LM and encoder, so a checkpoint is not loaded onto others.

        Computed once, from the weights as loaded (before any cast for training).
        """
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> dict:
        def digest(*tensors):
            h = hashlib.sha256()
            for t in tensors:
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            return h.hexdigest()[:16]

        lm = self.lm
        return {
            "language_model": digest(lm.norm.weight, lm.embed_tokens.weight[:64],
                                     lm.layers[-1].down_proj.weight),
            "encoder": f"{self.encoder.config.model_name}:"
                       + digest(self.encoder.backbone.conv_stem.weight
                                if hasattr(self.encoder.backbone, "conv_stem")
                                else next(self.encoder.backbone.parameters())),
        }

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write config.json and the trainable tensors (in `dtype`, e.g. bf16 to halve them)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous()
                 for k, v in self.trainable_state_dict().items()}
        atomic_write(path / WEIGHTS_NAME, lambda f: save_file(state, f))
        meta = {"config": self.config.to_dict(), "base": self.fingerprint(),
                "trainable_parameters": sum(v.numel() for v in state.values())}
        atomic_write(path / CONFIG_NAME, lambda f: Path(f).write_text(json.dumps(meta, indent=2)))

    def shrink_expert(self, rank: int) -> float:
        """Cut the low-rank expert to `rank` (see `expert.shrink_experts`); returns the smallest
        share of a delta's energy kept (1.0: nothing lost)."""
        check_shrink(self.config.expert, rank)
        kept = shrink_experts(self.lm, rank)
        self.config.expert.rank = rank
        return kept

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"language_model": num_params(self.lm) - sum(
                    p.numel() for layer in self.lm.layers if layer.expert is not None
                    for p in layer.expert.parameters()),
                "encoder": num_params(self.encoder), "trainable": trainable}


def check_shrink(expert: ExpertConfig, rank: int) -> None:
    """Raise ValueError unless `expert` is low-rank and `rank` is smaller than its own."""
    if expert.kind != "lowrank":
        raise ValueError(f"only a low-rank expert can be shrunk; this one is {expert.kind!r}")
    if not 1 <= rank < expert.rank:
        raise ValueError(f"the expert is already rank {expert.rank}; give a rank from 1 to "
                         f"{expert.rank - 1}")


def is_trainable_key(key: str) -> bool:
    return key.startswith("adapter.") or ".expert." in key


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would make it (safetensors makes 0600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """Hold an advisory lock on `path`, an existing file or folder, for the block; ValueError
    `busy` at once when another process holds it. Where there are no such locks (Windows, some
    network file systems), holds none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(busy) from None
        except OSError as e:
            log.debug("no lock on %s: %s", path, e)
        yield
    finally:
        os.close(fd)  # which releases the lock


def pick_device(device: str | None = "auto") -> torch.device:
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def build_model(config: ModelConfig | None = None, *, device: str | None = "auto",
                dtype: torch.dtype | None = None, seed: int = 0) -> VisionLanguageModel:
    """The base models with a freshly initialised (untrained) adapter and visual experts.

    Raises ValueError naming a setting of `config` of the wrong type or out of range."""
    from transformers import AutoTokenizer

    config = config or ModelConfig()
    check_config(config)
    lm_dir = default_lm_dir() if config.language_model == "default" else Path(config.language_model)
    lm = Decoder.from_pretrained(lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    encoder = ImageEncoder(config.vision)
    torch.manual_seed(seed)
    model = VisionLanguageModel(config, lm, tokenizer, encoder)
    model.fingerprint()
    target = pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    return model.to(target, dtype).eval()


def load_model(path: str | Path | None = None, *, device: str | None = "auto",
               dtype: torch.dtype | None = None, decode: str = "exact",
               image_size: int | None = None) -> VisionLanguageModel:
    """Load a checkpoint directory; with no path, the embedded default model.

    `decode` picks the weights generated tokens run through (`VisionLanguageModel.set_decode`).
    `image_size` other than the checkpoint's gives a finer or coarser grid of image tokens, its
    position embeddings stretched to fit: a warm start for training at that size (answers about
    images need that training first).
    """
    model = _load(path, device, dtype, image_size)
    if decode != "exact":
        model.set_decode(decode)
    return model


def _load(path, device, dtype, image_size=None) -> VisionLanguageModel:
    if path is None:
        if not (DEFAULT_CHECKPOINT / CONFIG_NAME).is_file():
            log.warning("no trained checkpoint at %s: the visual expert is untrained, so answers "
                        "about images will be poor (text-only answers are the base model's).",
                        DEFAULT_CHECKPOINT)
            config = ModelConfig()
            config.vision.image_size = image_size or config.vision.image_size
            return build_model(config, device=device, dtype=dtype)
        path = DEFAULT_CHECKPOINT
    path = Path(path)
    meta = read_checkpoint_config(path)
    config = ModelConfig.from_dict(meta["config"])
    resize = image_size not in (None, config.vision.image_size)
    if resize:
        config.vision.image_size = image_size
    model = build_model(config, device=device, dtype=dtype)
    base = model.fingerprint()
    if meta.get("base") and meta["base"] != base:
        raise CheckpointError(
            f"{path} was trained on a different base model ({meta['base']}) than the one "
            f"loaded now ({base}). Load it with the language model and image encoder it was "
            "trained on (see language_model and vision in its config.json)."
        )
    load_trainable(model, path / WEIGHTS_NAME, stretch_positions=resize)
    return model


def average_checkpoints(paths: Sequence[str | Path], weights: Sequence[float] | None = None,
                        ) -> VisionLanguageModel:
    """A model whose trainable tensors are the weighted mean of several checkpoints' (a soup).

    The checkpoints must share one config and base models, as stages trained from one another do;
    `weights` (default: equal) need not sum to 1. The mean is taken in float32, on the CPU.
    """
    paths = [Path(p) for p in paths]
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(paths) < 2:
        raise ValueError("averaging needs two checkpoints or more")
    if len(weights) != len(paths) or not all(0 <= w < math.inf for w in weights) or sum(weights) <= 0:
        raise ValueError(f"give one weight a checkpoint, none negative, not all zero: {len(paths)} "
                         f"checkpoints, weights {weights}")
    first = read_checkpoint_config(paths[0])
    for path in paths[1:]:
        meta = read_checkpoint_config(path)
        if (meta["config"], meta.get("base")) != (first["config"], first.get("base")):
            raise CheckpointError(f"{path} has a different config or base model than {paths[0]}: "
                                  "only checkpoints of one config and base can be averaged.")
    model = load_model(paths[0], device="cpu", dtype=torch.float32)
    total = sum(weights)
    mean = {k: torch.zeros_like(v) for k, v in model.trainable_state_dict().items()}
    for path, weight in zip(paths, weights, strict=True):
        load_trainable(model, path / WEIGHTS_NAME)
        for key, value in model.trainable_state_dict().items():
            mean[key] += value * (weight / total)
    model.load_state_dict(mean, strict=False)
    return model


def read_checkpoint_config(path: Path) -> dict:
    file = path / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file} not found: {path} is not a cogvlm_lite checkpoint "
                              "(it needs config.json and model.safetensors).")
    try:
        meta = json.loads(file.read_text())
        check_config(ModelConfig.from_dict(meta["config"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{file} is not a valid cogvlm_lite config ({e}).") from e
    return meta


def check_config(config: ModelConfig) -> None:
    """Raise ValueError naming the first setting of `config` of the wrong type or out of range."""
    import timm

    def whole(low: int, high: int = 1 << 20):
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    def text_or_none(v) -> bool:
        return v is None or isinstance(v, str)

    def flag(v) -> bool:
        return isinstance(v, bool)

    vision, adapter, expert = config.vision, config.adapter, config.expert
    checks = [
        ("language_model", config.language_model, lambda v: isinstance(v, str), "a folder or \"default\""),
        ("max_length", config.max_length, whole(256), "a whole number of tokens, at least 256"),
        ("system_prompt", config.system_prompt, text_or_none, "text or null"),
        ("vision.model_name", vision.model_name, lambda v: isinstance(v, str) and timm.is_model(v),
         "the name of a timm model"),
        ("vision.weights", vision.weights, text_or_none, "a path or null"),
        ("vision.image_size", vision.image_size, whole(SMALLEST_IMAGE, LARGEST_IMAGE),
         f"a whole number from {SMALLEST_IMAGE} to {LARGEST_IMAGE}"),
        ("adapter.downsample", adapter.downsample, flag, "true or false"),
        ("adapter.intermediate_size", adapter.intermediate_size, lambda v: v is None or whole(1)(v),
         "a whole number or null"),
        ("adapter.words", adapter.words, flag, "true or false"),
        ("expert.rank", expert.rank, whole(1), "a whole number, at least 1"),
    ]
    for name, value, ok, wanted in checks:
        if not ok(value):
            raise ValueError(f"{name} should be {wanted}, not {value!r}")


def load_trainable(model: VisionLanguageModel, file: Path, stretch_positions: bool = False) -> None:
    """Load a checkpoint's tensors; `stretch_positions` fits its grid positions to the model's."""
    if not file.is_file():
        raise CheckpointError(f"{file} not found: the checkpoint has no weights.")
    try:
        state = load_file(file)
    except Exception as e:  # safetensors raises several types for damaged files
        raise CheckpointError(f"{file} is damaged ({e}); restore it or train again.") from e
    expected = model.trainable_state_dict()
    if stretch_positions:
        for key in ("adapter.row_embed", "adapter.col_embed"):
            if key in state and key in expected:
                state[key] = resize_positions(state[key], expected[key].shape[0])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{file} does not match its config: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shapes {wrong[:3]}. The files were mixed up; restore them."
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise CheckpointError(f"{file} holds NaN or infinite values ({', '.join(broken[:3])}): the "
                              "run that saved it diverged. Use an earlier checkpoint, or train "
                              "again with a lower learning rate.")
    model.load_state_dict(state, strict=False)


"""`cogvlm-lite bench`: speed figures side by side with the peers, in one run on one machine.

Every figure is the median of several timed repeats after a warm-up. Peers: transformers'
`generate` on the same weights and precision, and llama.cpp on the packaged Q4_1 GGUF when
`llama_cpp` is importable (`pip install llama-cpp-python`, a source build); otherwise it reports
"skipped".

`--device cuda` runs the same figures on a GPU in bf16: our decoder and transformers on the card
(the CPU-only fused formats, the memory-bandwidth ceilings and llama.cpp are left out).
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from .train import bf16_pays

FORMATS = ("fp32", "bf16", "int8", "int4")  # fused decode formats measured beside the exact path
QUESTION = "Where is the dog in this picture? Answer in [[x0,y0,x1,y1]] format, please."


class Figures(dict):
    """The run's figures; each is also printed to stderr as it is measured, so a run cut short
    (a timeout, Ctrl-C) still shows what it had measured."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if key != "ratios":
            print(f"bench: {key} = {value}", file=sys.stderr, flush=True)


def synchronize() -> None:
    """Wait for queued GPU work, so host clocks time it (nothing to wait for on CPU)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(repeats: int, megabytes: int = 512) -> float:
    """Bytes/s this machine streams from memory: a reduction over a buffer far past the caches."""
    buffer = torch.ones(megabytes * 2**20 // 4)
    seconds = median_time(buffer.sum, repeats)
    return buffer.numel() * 4 / seconds


def test_image(size: int = 224) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def run_bench(tokens: int = 128, repeats: int = 3, quick: bool = False, device: str = "cpu") -> dict:
    """All figures as one dict with stable keys (seconds, tokens/s, MB, ratios)."""
    from .decoder import Decoder
    from .generation import GenerationConfig, decode_tokens
    from .model import load_model
    from .weights import convert_gguf, default_lm_dir, default_lm_gguf

    torch.manual_seed(0)
    device = torch.device(device)
    cuda = device.type == "cuda"
    figures = Figures(machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
                      torch=torch.__version__, new_tokens=tokens, repeats=repeats,
                      precision="exact path (fp32), fused fp32/bf16/int8/int4 decode formats")
    if cuda:
        figures["machine"] = torch.cuda.get_device_name(device)
        figures["precision"] = "bf16 on CUDA, exact path"
        torch.cuda.reset_peak_memory_stats(device)
    if not quick:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            convert_gguf(default_lm_gguf(), tmp + "/lm")
            Decoder.from_pretrained(tmp + "/lm")
            figures["load_first_run_s"] = round(time.perf_counter() - start, 2)
    default_lm_dir()
    start = time.perf_counter()
    model = load_model(device=str(device))
    synchronize()
    figures["load_warm_s"] = round(time.perf_counter() - start, 2)

    config = GenerationConfig(max_new_tokens=tokens)
    image = test_image(model.config.vision.image_size)

    def decode_speed(with_image: bool) -> float:
        runs = [decode_seconds(model, image if with_image else None, config, decode_tokens)
                for _ in range(repeats + 1)]
        return round(tokens / statistics.median(runs[1:]), 1)  # the first run is a warm-up

    figures["decode_tok_s"] = decode_speed(False)
    figures["decode_with_image_tok_s"] = decode_speed(True)
    if not cuda:
        cpu_formats(figures, model, decode_speed, repeats)
    pre_image = median_time(lambda: prefill(model, image), repeats)

    precisions = ((torch.bfloat16, "_bf16"),) if cuda else ((torch.float32, ""),
                                                             (torch.bfloat16, "_bf16"))
    for dtype, key in precisions:
        speed = transformers_decode(tokens, repeats, dtype, device)
        figures[f"transformers{key}_decode_tok_s"] = round(speed, 1)
    figures["llama_cpp_decode_tok_s"] = ("skipped (a CPU peer)" if cuda
                                         else llama_cpp_decode(tokens, repeats))

    ttft_image = test_image(224)
    figures["time_to_first_token_s"] = round(median_time(lambda: prefill(model, ttft_image),
                                                         repeats), 3)
    n_prefill = prompt_tokens(model, image)
    figures["prefill_tokens"] = n_prefill
    figures["prefill_tok_s"] = round(n_prefill / pre_image, 1)

    train_bf16 = bf16_pays(model.device)
    train_s, plain_s, n_train = training_speed(model, repeats, train_bf16)
    figures["train_tok_s"] = round(n_train / train_s, 1)
    figures["train_precision"] = "bf16 autocast" if train_bf16 else "fp32"
    figures["lm_forward_backward_tok_s"] = round(n_train / plain_s, 1)
    figures["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if cuda:
        figures["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)

    def ratio(a, b):
        both = isinstance(figures.get(a), float) and isinstance(figures.get(b), float)
        return round(figures[a] / figures[b], 3) if both else None

    figures["ratios"] = {
        "decode_exact_vs_transformers_fp32": ratio("decode_tok_s", "transformers_decode_tok_s"),
        "decode_fp32_vs_transformers_fp32": ratio("decode_fp32_tok_s",
                                                  "transformers_decode_tok_s"),
        "decode_bf16_vs_transformers_bf16": ratio("decode_tok_s" if cuda else "decode_bf16_tok_s",
                                                  "transformers_bf16_decode_tok_s"),
        "decode_fp32_vs_ceiling": ratio("decode_fp32_tok_s", "decode_fp32_ceiling_tok_s"),
        "transformers_fp32_vs_ceiling": ratio("transformers_decode_tok_s",
                                              "decode_fp32_ceiling_tok_s"),
        "decode_bf16_vs_ceiling": ratio("decode_bf16_tok_s", "decode_bf16_ceiling_tok_s"),
        "transformers_bf16_vs_ceiling": ratio("transformers_bf16_decode_tok_s",
                                              "decode_bf16_ceiling_tok_s"),
        "decode_image_vs_text": ratio("decode_with_image_tok_s", "decode_tok_s"),
        "decode_int8_vs_llama_cpp_q4_1": ratio("decode_int8_tok_s", "llama_cpp_decode_tok_s"),
        "decode_int4_vs_llama_cpp_q4_1": ratio("decode_int4_tok_s", "llama_cpp_decode_tok_s"),
        "train_vs_lm_forward_backward": ratio("train_tok_s", "lm_forward_backward_tok_s"),
    }
    return figures


def cpu_formats(figures: dict, model, decode_speed, repeats: int) -> None:
    """Each fused decode format's tokens/s, and the ceiling memory bandwidth puts on it."""
    weight_bytes = {}
    for fmt in FORMATS:
        model.set_decode(fmt)
        figures[f"decode_{fmt}_tok_s"] = decode_speed(False)
        weight_bytes[fmt] = model.text_decoder.weight_bytes()
        if fmt == "fp32":  # how much of it this machine runs as row blocks (`row_blocks`)
            figures["decode_fp32_split_share"] = round(model.text_decoder.split_share(), 2)
    model.set_decode("exact")
    # Decoding one token reads every weight once: memory bandwidth caps tokens/s per format.
    bandwidth = read_bandwidth(repeats)
    figures["memory_read_gb_s"] = round(bandwidth / 1e9, 1)
    for fmt in FORMATS:
        figures[f"decode_{fmt}_ceiling_tok_s"] = round(bandwidth / weight_bytes[fmt], 1)


def prefill(model, image) -> str:
    """Image loading, encoder, adapter and prefill: the work before the first token."""
    model.reset()
    return model.chat(image, QUESTION, max_new_tokens=1)


def decode_seconds(model, image, config, decode_tokens) -> float:
    """Seconds to decode exactly `config.max_new_tokens` tokens after a prefill (end ignored)."""
    from .conversation import as_messages

    with torch.no_grad():
        n_image = model.adapter.num_tokens if image is not None else 0
        ids = model.builder.encode(as_messages([], QUESTION), image_tokens=n_image).input_ids
        embeds = model.image_embeddings([image]) if image is not None else None
        cache = model.lm.new_cache(1, len(ids) + n_image + config.max_new_tokens)
        inputs = model.prepare(torch.tensor([ids], device=model.device), embeds)
        last = model.lm.logits(model.hidden_states(inputs, cache=cache)[0, -1])
    position = int(inputs.position_ids[0, -1]) + 1
    start = time.perf_counter()
    for _ in decode_tokens(model.text_decoder, cache, last, position, config, stop_ids=set()):
        pass
    synchronize()
    return time.perf_counter() - start


def prompt_tokens(model, image) -> int:
    from .conversation import as_messages

    n_image = model.adapter.num_tokens if image is not None else 0
    ids = model.builder.encode(as_messages([], QUESTION), image_tokens=n_image).input_ids
    return len(ids) + max(n_image - 1, 0)


def transformers_decode(tokens: int, repeats: int, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .weights import default_lm_dir

    path = default_lm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"].to(device)

    def run(n):
        with torch.no_grad():
            lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                        min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)

    total = median_time(lambda: run(tokens), repeats)
    first = median_time(lambda: run(1), repeats)
    return tokens / max(total - first, 1e-9)


def llama_cpp_decode(tokens: int, repeats: int) -> float | str:
    try:
        from llama_cpp import Llama
    except ImportError:
        return "skipped (llama_cpp not installed: pip install llama-cpp-python)"
    from .weights import default_lm_gguf

    llm = Llama(model_path=str(default_lm_gguf()), n_threads=torch.get_num_threads(), verbose=False)

    def run(n):
        llm.reset()
        llm(QUESTION, max_tokens=n, temperature=0.0, logit_bias={llm.token_eos(): -1e9})

    total = median_time(lambda: run(tokens), repeats)
    first = median_time(lambda: run(1), repeats)
    return round(tokens / max(total - first, 1e-9), 1)


def training_speed(model, repeats: int, bf16: bool, batch: int = 8) -> tuple[float, float, int]:
    """Seconds per step: expert fine-tuning vs a plain LM forward+backward on as many tokens,
    both under bf16 autocast or both in fp32 (training picks bf16 where `bf16_pays`).

    Runs last: it may keep `model`'s frozen weights in bf16 from here on, as training does.
    """
    from .conversation import as_messages
    from .decoder import Decoder
    from .train import freeze_in
    from .weights import default_lm_dir

    trainee = model.train()
    device = trainee.device
    if bf16:
        freeze_in(trainee, torch.bfloat16)
    messages = as_messages([(QUESTION, "[[120,340,560,780]]")] * 2)
    enc = trainee.builder.encode(messages, image_tokens=trainee.adapter.num_tokens,
                                 generation_prompt=False)
    ids = torch.tensor([enc.input_ids] * batch, device=device)
    labels = torch.tensor([enc.labels] * batch, device=device)
    features = trainee.encoder(trainee.pixels([test_image()] * batch).to(device))
    params = [p for p in trainee.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = trainee(input_ids=ids, image_features=features, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    n_tokens = batch * (ids.shape[1] + trainee.adapter.num_tokens - 1)
    train_s = median_time(step, repeats)
    lm = Decoder.from_pretrained(default_lm_dir()).to(device, torch.bfloat16 if bf16 else None)
    for name, p in lm.named_parameters():
        p.requires_grad_(name.split(".")[-2] in ("gate_proj", "up_proj", "down_proj"))
    plain_ids = torch.randint(0, lm.config.vocab_size, (batch, n_tokens // batch), device=device)

    def plain():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = lm.logits(lm(plain_ids))
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                     plain_ids[:, 1:].flatten())
        loss.backward()
        for p in lm.parameters():
            p.grad = None

    plain_s = median_time(plain, repeats)
    return train_s, plain_s, n_tokens


def report(figures: dict) -> str:
    lines = [f"cogvlm-lite bench — {figures['machine']}, torch {figures['torch']}, "
             f"{figures['precision']}, {figures['new_tokens']} new tokens, median of "
             f"{figures['repeats']}"]
    for key, value in figures.items():
        if key in ("machine", "torch", "precision", "new_tokens", "repeats", "ratios"):
            continue
        lines.append(f"  {key:32s} {value}")
    lines.append("  ratios:")
    for key, value in figures["ratios"].items():
        lines.append(f"    {key:30s} {value if value is not None else 'n/a'}")
    return "\n".join(lines)


def main(as_json: bool, quick: bool, tokens: int | None, repeats: int | None,
         device: str = "cpu") -> None:
    figures = run_bench(tokens or (8 if quick else 128), repeats or (1 if quick else 3), quick,
                        device)
    print(json.dumps(figures) if as_json else report(figures))

"""The command line: every subcommand exercised in a real subprocess."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def cli(*args, stdin: str = "", timeout: int = 120):
    return subprocess.run([sys.executable, "-m", "cogvlm_lite", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_help_lists_the_commands():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("chat", "scenes", "train", "vqa", "eval", "serve", "bench", "shrink", "average",
                    "probe"):
        assert command in out.stdout


def test_committed_recipes_are_train_options():
    from cogvlm_lite.cli import build_parser, load_options
    from cogvlm_lite.train_config import TrainConfig

    recipes = sorted((Path(__file__).resolve().parent.parent / "checkpoints").glob("recipe*.json"))
    assert len(recipes) >= 6
    _, train_parser = build_parser()
    for recipe in recipes:
        options = load_options(str(recipe), train_parser)  # raises on an unknown option
        assert TrainConfig(**options).data.endswith(".jsonl"), recipe


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["vqa"]])
def test_help_and_bad_options_answer_without_loading_torch(args):
    code = (f"import sys\nfrom cogvlm_lite.cli import main\ntry:\n    main({args!r})\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'PIL'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[-1] == "[]", out.stderr[-2000:]


def test_option_choices_match_the_modules_that_take_them():
    """The parser spells some choices out (so --help imports neither torch nor the scene
    drawing); they must stay those the modules accept."""
    from cogvlm_lite.cli import build_parser
    from cogvlm_lite.model import DECODE_CHOICES
    from cogvlm_lite.questions import TYPINGS, WORDINGS
    from cogvlm_lite.scenes import COMPRESSIONS, STYLES

    parser, _ = build_parser()
    scenes = parser.parse_args(["scenes", "--n", "1", "--out", "x"])
    assert (scenes.wording, scenes.style, scenes.typing, scenes.compression) == (
        WORDINGS[0], STYLES[0], TYPINGS[0], COMPRESSIONS[0])
    assert scenes.aspect == (1.0, 1.0)
    for typed, aspect in (("1.78", (1.78, 1.78)), ("0.56-1.78", (0.56, 1.78))):
        assert parser.parse_args(["scenes", "--n", "1", "--out", "x", "--aspect", typed]
                                 ).aspect == aspect
    with pytest.raises(SystemExit):
        parser.parse_args(["scenes", "--n", "1", "--out", "x", "--aspect", "wide"])
    for option, expected in (("--wording", WORDINGS), ("--style", STYLES), ("--typing", TYPINGS),
                             ("--compression", COMPRESSIONS), ("--decode", DECODE_CHOICES)):
        actions = [a for sub in parser._subparsers._group_actions for p in sub.choices.values()
                   for a in p._actions if option in a.option_strings]
        assert actions and all(tuple(a.choices) == tuple(expected) for a in actions), option


def test_chat_on_a_piped_conversation(tiny_checkpoint, tmp_path):
    picture = tmp_path / "a.png"
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(picture)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    script = "\n".join([
        "Where is the dog?",
        "image",
        f"image {tmp_path / 'bad.png'}",
        f"image {picture}",
        "How many cats are there?",
        "clear",
        "Describe the image.",
    ]) + "\n"
    out = cli("chat", "--checkpoint", str(tiny_checkpoint), "--image", str(picture),
              "--max-new-tokens", "4", "--device", "cpu", stdin=script)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("not an image" in line.lower() or "cannot" in line.lower() for line in lines)
    assert "error: say which image: image PATH" in lines
    assert "(new image: 50x40; conversation cleared)" in lines
    assert "(conversation cleared)" in lines
    assert len([line for line in lines if not line.startswith(("(", "error"))]) >= 3
    assert not any("no longer fit" in line for line in lines)

    long = "Where is the dog and how many cats are there? " * 12  # some 100 tokens a question
    out = cli("chat", "--checkpoint", str(tiny_checkpoint), "--image", str(picture),
              "--max-new-tokens", "4", "--device", "cpu", stdin=f"{long}\n" * 6)
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stdout.splitlines() if "no longer fit" in line]
    assert notes and notes[0] == "(the oldest exchange no longer fits the context and was left out; " \
                                 "'clear' starts over)", out.stdout


class CropAnswers:
    """A stand-in model: the first answer holds a small box; a crop is answered with its middle."""

    def __init__(self):
        self.asked = []

    def stream_chat(self, image, query, history=(), **options):
        self.asked.append((image.size, query))
        yield "The frog"
        yield "The frog [[500,500,600,600]]."

    def chat(self, image, query, history=(), **options):
        self.asked.append((image.size, query))
        return "[[250,250,750,750]]"

    def reset(self):
        pass


@pytest.mark.parametrize("zoom", [False, True])
def test_chat_zoom_prints_the_answer_found_again_on_a_crop(zoom, tmp_path, monkeypatch, capsys):
    from cogvlm_lite import cli as cli_module
    from cogvlm_lite import model as model_module

    Image.new("RGB", (400, 300)).save(tmp_path / "pond.png")
    stand_in = CropAnswers()
    monkeypatch.setattr(model_module, "load_model", lambda *args, **kwargs: stand_in)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Where is the frog?\n"))
    args = ["chat", "--image", str(tmp_path / "pond.png")] + (["--zoom"] if zoom else [])
    assert cli_module.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "The frog [[500,500,600,600]]."
    if zoom:  # the crop (160, 105, 280, 225): its middle half is x 190..250, y 135..195
        assert lines[1] == "(looked again) The frog [[475,450,625,650]]."
        assert stand_in.asked == [((400, 300), "Where is the frog?"),
                                  ((400, 300), "Is there a frog in the image?"),
                                  *2 * [((120, 120), "Where is the frog?")]]  # and mirrored
    else:
        assert len(lines) == 1 and len(stand_in.asked) == 1


class Interrupted(CropAnswers):
    """A stand-in whose answer, or whose zoom, is cut short by Ctrl-C."""

    def __init__(self, during: str):
        super().__init__()
        self.during = during
        self.histories = []

    def stream_chat(self, image, query, history=(), **options):
        self.histories.append(list(history))
        yield "The frog"
        if self.during == "answer" and len(self.histories) == 1:
            raise KeyboardInterrupt
        yield "The frog [[500,500,600,600]]."

    def chat(self, image, query, history=(), **options):
        if self.during == "zoom":
            raise KeyboardInterrupt
        return super().chat(image, query, history, **options)


@pytest.mark.parametrize("during", ["answer", "zoom"])
def test_chat_ctrl_c_keeps_what_was_answered(during, tmp_path, monkeypatch, capsys):
    from cogvlm_lite import cli as cli_module
    from cogvlm_lite import model as model_module

    Image.new("RGB", (400, 300)).save(tmp_path / "pond.png")
    stand_in = Interrupted(during)
    monkeypatch.setattr(model_module, "load_model", lambda *args, **kwargs: stand_in)
    monkeypatch.setattr(sys, "stdin", io.StringIO("Where is the frog?\nAnd now?\n"))
    assert cli_module.main(["chat", "--zoom", "--image", str(tmp_path / "pond.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    kept = "The frog" if during == "answer" else "The frog [[500,500,600,600]]."
    assert lines[0] == kept + (" (stopped)" if during == "answer" else "")
    if during == "zoom":
        assert lines[1] == "(zoom stopped; the answer above stands)"
    assert stand_in.histories == [[], [("Where is the frog?", kept)]]


class TypedInput:
    """Lines typed at a terminal (or piped, `tty=False`); KeyboardInterrupt is a Ctrl-C."""

    def __init__(self, *lines, tty: bool = True):
        self.lines, self.tty = list(lines), tty

    def isatty(self):
        return self.tty

    def readline(self):
        line = self.lines.pop(0) if self.lines else ""
        if line is KeyboardInterrupt:
            raise KeyboardInterrupt
        return line


@pytest.mark.parametrize("tty", [True, False])
def test_chat_ctrl_c_at_the_prompt(tty, tmp_path, monkeypatch, capsys):
    """At a terminal it keeps the conversation and says how to quit; piped, it quits."""
    from cogvlm_lite import cli as cli_module
    from cogvlm_lite import model as model_module

    Image.new("RGB", (400, 300)).save(tmp_path / "pond.png")
    stand_in = Interrupted("never")
    monkeypatch.setattr(model_module, "load_model", lambda *args, **kwargs: stand_in)
    monkeypatch.setattr(sys, "stdin", TypedInput("Where is the frog?\n", KeyboardInterrupt,
                                                 "And now?\n", tty=tty))
    code = cli_module.main(["chat", "--image", str(tmp_path / "pond.png")])
    out = capsys.readouterr().out
    if tty:
        assert code == 0 and "(Ctrl-D or 'exit' quits)" in out and out.endswith("\n")
        assert stand_in.histories == [[], [("Where is the frog?", "The frog [[500,500,600,600]].")]]
    else:
        assert code == 130 and stand_in.histories == [[]]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--data", "q.jsonl", "--baseline", "--limit", "0"], "--limit: must be at least 1, got 0"),
    (["vqa", "--data", "q", "--out", "p", "--limit", "-1"], "--limit: must be at least 1, got -1"),
    (["serve", "--port", "99999"], "--port: a port is 1 to 65535, got 99999"),
    (["bench", "--tokens", "0"], "--tokens: must be at least 1, got 0"),
    (["average", "a", "b", "--out", "c", "--weights", "nan", "1"], "--weights: must be a finite number"),
    (["shrink", "--rank", "0", "--out", "c"], "--rank: must be at least 1, got 0"),
    (["scenes", "--n", "2", "--out", "c", "--seed", "-1"], "--seed: must be at least 0, got -1"),
    (["probe", "--data", "a", "--eval-data", "b", "--epochs", "0"], "--epochs: must be at least 1"),
    (["probe", "--data", "a", "--eval-data", "b", "--image-size", "4096"],
     "--image-size: must be at most 1536, got 4096"),
    (["chat", "--max-new-tokens", "ten"], "--max-new-tokens: 'ten' is not a whole number"),
])
def test_bad_numbers_are_refused_before_anything_runs(argv, message, capsys):
    from cogvlm_lite.cli import build_parser

    parser, _ = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert message in capsys.readouterr().err


def test_bad_sampling_settings_and_a_busy_port_fail_before_the_model_loads(tmp_path):
    import socket

    # The checkpoint does not exist: reaching the model would give another message.
    missing = str(tmp_path / "no-such-checkpoint")
    out = cli("chat", "--checkpoint", missing, "--temperature", "-1")
    assert out.returncode == 1 and "temperature must be a finite number, at least 0, got -1" in out.stderr
    assert "Traceback" not in out.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for command in ([sys.executable, "-m", "cogvlm_lite", "serve"], [sys.executable, "app.py"]):
            out = subprocess.run([*command, "--port", port, "--checkpoint", missing], text=True,
                                 capture_output=True, timeout=120,
                                 cwd=Path(__file__).resolve().parent.parent)
            assert out.returncode == 1, out.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "--port" in out.stderr


def test_chat_with_a_missing_image_fails_clearly(tiny_checkpoint, tmp_path):
    out = cli("chat", "--checkpoint", str(tiny_checkpoint), "--image", str(tmp_path / "nope.png"))
    assert out.returncode == 1
    assert "nope.png" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.weights
def test_default_chat_cli_answers(tmp_path):
    out = cli("chat", "--max-new-tokens", "20", "--device", "cpu",
              stdin="What is the capital of France? Answer briefly.\n")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


@pytest.mark.weights
def test_ctrl_c_stops_a_chat_answer_and_the_chat_goes_on():
    import os
    import signal
    import threading

    # Ctrl-C as at a terminal, even where the tests run with SIGINT ignored (started in the
    # background by a shell without job control), which the chat would inherit.
    chat = subprocess.Popen([sys.executable, "-m", "cogvlm_lite", "chat", "--max-new-tokens", "400",
                             "--device", "cpu", "--decode", "fp32"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=0,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out = ""
    timer = threading.Timer(300, chat.kill)
    timer.start()
    try:
        chat.stdin.write("Tell me a very long story about a dragon and a knight.\n")
        chat.stdin.flush()
        while len(out.split()) < 8 and chat.poll() is None:  # the story is under way
            out += chat.stdout.read(1)
        os.kill(chat.pid, signal.SIGINT)
        stopped = ""
        while "(stopped)" not in stopped and (c := chat.stdout.read(1)):
            stopped += c
        assert "(stopped)" in stopped, f"exit {chat.wait()}, {out + stopped!r}: {chat.stderr.read()}"
        chat.stdin.write("What is the capital of France? Answer briefly.\n")
        chat.stdin.close()
        rest = chat.stdout.read()
        assert chat.wait() == 0, chat.stderr.read()
    finally:
        timer.cancel()
    story = (out + stopped).split("(stopped)")[0].strip()
    assert 8 <= len(story.split()) < 300, story  # far fewer than 400 tokens' worth
    assert "Paris" in rest and "Traceback" not in chat.stderr.read()


def test_probe_cli_names_a_bad_line_or_a_missing_file(tmp_path):
    good = tmp_path / "train.jsonl"
    good.write_text('{"image": "a.png", "objects": []}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "objects": []}\n{"image": oops\n')
    for data, eval_data, message in ((bad, good, "bad.jsonl, line 2: not valid JSON"),
                                     (good, tmp_path / "nope.jsonl", "nope.jsonl not found")):
        out = cli("probe", "--data", str(data), "--eval-data", str(eval_data))
        assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.weights
def test_probe_cli_measures_an_image_size(tmp_path):
    from cogvlm_lite.scenes import write_dataset

    write_dataset(tmp_path / "scenes", 4, seed=3, image_size=128)
    data = str(tmp_path / "scenes" / "train.jsonl")
    out = cli("probe", "--data", data, "--eval-data", data, "--image-size", "224", "--images", "3",
              "--epochs", "1", "--device", "cpu", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["image_size"] == 224 and result["grid"] == [7, 7]
    records = [json.loads(line) for line in Path(data).read_text().splitlines()]
    assert result["all"]["n"] == sum({r["image"]: len(r["objects"]) for r in records}.values())
    assert all(result[size]["n"] >= 0 for size in ("small", "medium", "large"))


@pytest.mark.weights
def test_bench_quick_json_has_stable_keys():
    import json

    out = cli("bench", "--quick", "--json", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("load_warm_s", "decode_tok_s", "decode_with_image_tok_s", "decode_bf16_tok_s",
                "decode_fp32_tok_s", "decode_int8_tok_s", "decode_int4_tok_s", "transformers_decode_tok_s",
                "transformers_bf16_decode_tok_s", "llama_cpp_decode_tok_s",
                "time_to_first_token_s", "prefill_tok_s", "train_tok_s",
                "lm_forward_backward_tok_s", "peak_memory_mb", "memory_read_gb_s",
                "decode_fp32_ceiling_tok_s", "decode_int4_ceiling_tok_s", "decode_fp32_split_share"):
        assert key in figures, key
    assert 0 <= figures["decode_fp32_split_share"] <= 1
    assert figures["decode_tok_s"] > 0 and figures["decode_int8_tok_s"] > 0
    assert figures["train_tok_s"] > 0
    # each figure is printed as it is measured: a run cut short still shows what it measured
    assert f"bench: decode_tok_s = {figures['decode_tok_s']}" in out.stderr
    # fewer bytes per weight, a higher bandwidth ceiling
    ceilings = [figures[f"decode_{fmt}_ceiling_tok_s"] for fmt in ("fp32", "bf16", "int8", "int4")]
    assert ceilings == sorted(ceilings) and ceilings[0] > 0
    assert set(figures["ratios"]) == {
        "decode_exact_vs_transformers_fp32", "decode_fp32_vs_transformers_fp32",
        "decode_bf16_vs_transformers_bf16", "decode_image_vs_text",
        "decode_fp32_vs_ceiling", "transformers_fp32_vs_ceiling", "decode_bf16_vs_ceiling",
        "transformers_bf16_vs_ceiling",
        "decode_int8_vs_llama_cpp_q4_1", "decode_int4_vs_llama_cpp_q4_1",
        "train_vs_lm_forward_backward"}


def test_average_writes_the_mean_checkpoint_and_refuses_to_overwrite(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    from cogvlm_lite.model import load_model

    tiny_model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        tiny_model.adapter.boi.add_(2.0)
    tiny_model.save_pretrained(tmp_path / "b")
    out = tmp_path / "soup"
    args = ("average", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out))
    done = cli(*args, "--weights", "1", "3")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["weights"] == [0.25, 0.75]
    a, soup = load_file(tmp_path / "a/model.safetensors"), load_file(out / "model.safetensors")
    assert soup["adapter.boi"].dtype == torch.bfloat16
    assert torch.allclose(soup["adapter.boi"].float(), a["adapter.boi"] + 1.5, atol=0.02)
    assert load_model(out, device="cpu").config == tiny_model.config
    again = cli(*args)
    assert again.returncode == 1 and "already holds a checkpoint" in again.stderr
    alone = cli("average", str(tmp_path / "a"), "--out", str(tmp_path / "alone"))
    assert alone.returncode == 1 and "two checkpoints or more" in alone.stderr
    assert not (tmp_path / "alone").exists()


def test_shrink_writes_a_smaller_checkpoint_and_refuses_to_overwrite(tiny_checkpoint, tmp_path):
    from cogvlm_lite.model import load_model

    out = tmp_path / "small"
    (tiny_checkpoint / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (tiny_checkpoint / "heldout-metrics.json").write_text("{}")
    args = ("shrink", "--checkpoint", str(tiny_checkpoint), "--rank", "2", "--out", str(out))
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rank"] == 2 and summary["smallest_energy_kept"] == 1.0  # untrained: zero
    assert summary["copied"] == ["metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == (tiny_checkpoint / "metrics.jsonl").read_text()
    assert not (out / "heldout-metrics.json").exists()  # figures of the unshrunk weights
    assert load_model(out, device="cpu").config.expert.rank == 2
    again = cli(*args)
    assert again.returncode == 1 and "already holds a checkpoint" in again.stderr
    same = cli("shrink", "--checkpoint", str(tiny_checkpoint), "--rank", "4", "--out",
               str(tmp_path / "same"))
    assert same.returncode == 1 and "already rank 4" in same.stderr
    # checked before the model loads: a folder of only config.json is refused for the rank too
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    early = cli("shrink", "--checkpoint", str(tmp_path / "config-only"), "--rank", "8", "--out",
                str(tmp_path / "early"))
    assert early.returncode == 1 and "already rank 4" in early.stderr

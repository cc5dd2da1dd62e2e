"""The `cogvlm-lite` command (also `python -m cogvlm_lite`): one entry point, a subcommand each."""

from __future__ import annotations

import argparse
import sys

from .train_config import LARGEST_IMAGE, SMALLEST_IMAGE, TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser, train_parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.config:
        try:
            train_parser.set_defaults(**load_options(args.config, train_parser))
        except ValueError as e:
            parser.error(str(e))
        args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        print(f"cogvlm-lite {args.command}: {e}", file=sys.stderr)
        return 1


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser, and the train subcommand's (whose defaults --config sets)."""
    parser = argparse.ArgumentParser(prog="cogvlm-lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="interactive chat in the terminal, streaming")
    p.add_argument("--image", help="an image to talk about")
    add_model_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--system", help="system prompt (default: the chat template's own)")
    p.add_argument("--zoom", action="store_true",
                   help="look again at boxes (on a crop, every look also mirrored; a description's "
                        "boxes checked first) "
                        "and at a small region asked about; a changed answer is printed again")
    p.set_defaults(run=run_chat)

    p = sub.add_parser("scenes", help="write a synthetic grounded data set (images + JSONL)")
    p.add_argument("--n", type=int, required=True, help="number of scenes")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--force", action="store_true", help="overwrite an existing data set")
    p.add_argument("--workers", type=int, default=1, help="processes drawing scenes (same files)")
    p.add_argument("--wording", choices=("trained", "varied", "unseen"), default="trained",
                   help="varied: about half the questions in more phrasings, for training; "
                        "unseen: the same scenes and answers, every question worded as training "
                        "data never is (to test robustness to new phrasings)")
    p.add_argument("--style", choices=("trained", "varied", "broad", "unseen"), default="trained",
                   help="varied: the trained look augmented (turned, recoloured, blurred, "
                        "grainy), for training; broad: varied, and some scenes on patterned "
                        "backgrounds, some pictures in grey or turned hues; unseen: objects "
                        "drawn in styles and on photographs that training scenes never use (to "
                        "test robustness to new looks)")
    p.add_argument("--typing", choices=("exact", "loose"), default="exact",
                   help="loose: about half the questions typed as people often type them: "
                        "without the final punctuation, in lower case, or both (the same "
                        "scenes, questions and answers otherwise)")
    p.add_argument("--compression", choices=("none", "jpeg", "mixed"), default="none",
                   help="jpeg: every picture saved as a JPEG file of a quality from 40 to 95, as "
                        "photos are shared (to test robustness to compression); mixed: half of "
                        "them, for training (the same scenes, questions and answers otherwise)")
    p.add_argument("--aspect", type=aspect_range, default=(1.0, 1.0), metavar="A[-B]",
                   help="widen every picture by A (1.78: 16:9 landscape, as phones take "
                        "photos), or each by a factor from A to B (0.56-1.78: portrait to "
                        "landscape, for training); from 0.2 to 5")
    p.add_argument("--counting", action="store_true",
                   help="also write train-count.jsonl: train.jsonl with one more conversation a "
                        "scene that only counts its objects")
    p.add_argument("--locating", action="store_true",
                   help="also write train-locate.jsonl: train.jsonl with one more conversation a "
                        "scene that asks where each object is (with --counting: both, in "
                        "train-count-locate.jsonl)")
    p.set_defaults(run=run_scenes)

    p = sub.add_parser("train", help="fine-tune the visual expert (+ adapter); resumable; torchrun-ready")
    p.add_argument("--config", help="a JSON file of these options (flags given here override it)")
    add_dataclass_arguments(p, TrainConfig)
    p.set_defaults(run=run_train)
    train_parser = p

    p = sub.add_parser("vqa", help="batch grounded VQA: answer every question of a JSONL file")
    p.add_argument("--data", required=True, help="questions JSONL (id, image, question, ...)")
    p.add_argument("--out", required=True, help="predictions JSONL; existing ids are skipped")
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=at_least(1), default=128)
    p.add_argument("--limit", type=at_least(1), help="answer at most this many questions")
    p.add_argument("--zoom", action="store_true",
                   help="look again at boxes (on a crop, every look also mirrored; a description's "
                        "boxes checked first) "
                        "and at a small region asked about")
    p.set_defaults(run=run_vqa)

    p = sub.add_parser("eval", help="score predictions; prints JSON metrics per task type")
    p.add_argument("--data", required=True, help="questions JSONL with reference answers")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--pred", help="predictions JSONL (id, prediction)")
    group.add_argument("--baseline", action="store_true",
                       help="score trivial answers instead (centre box, most common answer)")
    p.add_argument("--limit", type=at_least(1),
                   help="score only the first N questions (those `vqa --limit N` answers)")
    p.set_defaults(run=run_eval)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: none)")
    add_model_arguments(p)
    p.set_defaults(run=run_serve)

    p = sub.add_parser("bench", help="speed figures, side by side with transformers and llama.cpp")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="few tokens, one repeat (a smoke run)")
    p.add_argument("--tokens", type=at_least(1), help="new tokens per decode (default 128; quick: 8)")
    p.add_argument("--repeats", type=at_least(1), help="timed repeats, median reported (default 3)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the same figures on a GPU (bf16)")
    p.set_defaults(run=run_bench)

    p = sub.add_parser("shrink", help="cut a checkpoint's low-rank expert to a smaller rank (SVD)")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the embedded model)")
    p.add_argument("--rank", type=at_least(1), required=True, help="the new, smaller rank")
    p.add_argument("--out", required=True, help="folder of the new checkpoint")
    p.add_argument("--save-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--force", action="store_true", help="replace a checkpoint already in --out")
    p.set_defaults(run=run_shrink)

    p = sub.add_parser("average", help="average the weights of checkpoints of one config (a soup)")
    p.add_argument("checkpoints", nargs="+", help="two checkpoint folders or more")
    p.add_argument("--weights", type=finite_float, nargs="+",
                   help="one a checkpoint (default: equal)")
    p.add_argument("--out", required=True, help="folder of the new checkpoint")
    p.add_argument("--save-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--force", action="store_true", help="replace a checkpoint already in --out")
    p.set_defaults(run=run_average)

    p = sub.add_parser("probe", help="how well the image tokens of an image size name and find "
                                      "objects: a fresh adapter pre-aligned, no LM training")
    p.add_argument("--data", required=True, help="scenes train.jsonl to pre-align on")
    p.add_argument("--eval-data", required=True, help="held-out scenes train.jsonl to probe on")
    p.add_argument("--image-size", type=at_least(SMALLEST_IMAGE, LARGEST_IMAGE), default=256)
    p.add_argument("--images", type=at_least(1), default=1500, help="training scenes used (the first N)")
    p.add_argument("--epochs", type=at_least(1), default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    p.set_defaults(run=run_probe)

    return parser, train_parser


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a fine-tuned checkpoint folder (default: the embedded model)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    p.add_argument("--decode", default="exact", choices=("exact", "fp32", "bf16", "int8", "int4"),
                   help="weights that generated tokens run through: exact (the language model's "
                        "own; text-only answers are the base model's), or fused copies (faster: "
                        "fp32 gives the same greedy tokens; int8/int4 on CPU only)")


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=at_least(1), default=256)


def at_least(low: int, high: int | None = None):
    """An argparse type: an integer no smaller than `low` (and, given `high`, no larger)."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    return check


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    port = at_least(1)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {port}")
    return port


def check_port_free(host: str, port: int) -> None:
    """Raise ValueError if nothing can listen on `host`:`port` now (before a model loads)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                         "pick another --port (or --host), or stop what is using it") from None


def finite_float(text: str) -> float:
    """An argparse type: a number that is neither infinite nor NaN."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def add_dataclass_arguments(p: argparse.ArgumentParser, config: type) -> None:
    """One option per field of a configuration dataclass (`--no-x` for flags on by default)."""
    import dataclasses

    for f in dataclasses.fields(config):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        if f.type == "bool | None":  # unset: the program decides
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
            continue
        if f.type in ("bool", bool):
            if f.default:
                p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name,
                               action="store_false")
            else:
                p.add_argument(flag, action="store_true")
            continue
        kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
        p.add_argument(flag, type=kind, default=None if required else f.default,
                       help="required" if required else None)


def load_options(path: str, p: argparse.ArgumentParser) -> dict:
    """Options from a JSON file, checked against the parser's own: each name, and its value's type."""
    import json
    from pathlib import Path

    try:
        options = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read --config {path}: {e}") from e
    if not isinstance(options, dict):
        raise ValueError(f'--config {path} must hold a JSON object, such as {{"data": "train.jsonl", '
                         '"steps": 500}')
    actions = {a.dest: a for a in p._actions}
    unknown = sorted(set(options) - set(actions))
    if unknown:
        raise ValueError(f"--config {path}: unknown options {unknown}")
    for key, value in options.items():
        action = actions[key]
        if value is None and action.default is None:
            continue  # an option left unset
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if action.nargs == 0:  # a flag
            kind, fits = "true or false", isinstance(value, bool)
        elif action.type is int:
            kind, fits = "a whole number", number and isinstance(value, int)
        elif action.type is float:
            kind, fits = "a number", number
        else:
            kind, fits = "a string", isinstance(value, str)
        if not fits:
            raise ValueError(f'--config {path}: "{key}" must be {kind}, not {json.dumps(value)}')
    return options


def generation_kwargs(args) -> dict:
    return dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens)


def run_chat(args) -> int:
    from .conversation import dropped_note
    from .generation import GenerationConfig
    from .images import ImageError, load_image
    from .model import load_model
    from .zoom import zoom_in

    GenerationConfig(**generation_kwargs(args))  # bad settings fail here, not at every message
    image, history = None, []
    if args.image:
        image = load_image(args.image)
    model = load_model(args.checkpoint, device=args.device, decode=args.decode)
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message. Commands: 'image PATH' switches image, 'clear' starts over, "
              "'exit' (or Ctrl-D) quits. Ctrl-C stops an answer.")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            if not interactive:
                raise
            print("\n(Ctrl-D or 'exit' quits)")  # a Ctrl-C meant for an answer loses nothing
            continue
        if not line:
            if interactive:
                print()
            break
        line = line.strip()
        if not line:
            continue
        if line in ("exit", "quit"):
            break
        if line == "clear":
            history = []
            model.reset()
            print("(conversation cleared)")
            continue
        if line == "image":
            print("error: say which image: image PATH")
            continue
        if line.startswith("image "):
            try:
                image = load_image(line[6:].strip())
            except ImageError as e:
                print(f"error: {e}")
                continue
            history = []
            print(f"(new image: {image.width}x{image.height}; conversation cleared)")
            continue
        shown = ""
        options = dict(system=args.system, **generation_kwargs(args))
        usage: dict = {}
        try:
            for text in model.stream_chat(image, line, history, usage=usage, **options):
                print(text[len(shown):], end="", flush=True)
                shown = text
            print()
            if usage.get("dropped_turns"):
                print(f"({dropped_note(usage['dropped_turns'])}; 'clear' starts over)")
            if args.zoom and image is not None:
                try:
                    zoomed = zoom_in(model, image, line, shown, **options)
                except KeyboardInterrupt:
                    print("(zoom stopped; the answer above stands)")
                    zoomed = shown
                if zoomed != shown:
                    print(f"(looked again) {zoomed}")
                    shown = zoomed
        except KeyboardInterrupt:  # Ctrl-C stops the answer, as the UI's Stop does
            print(" (stopped)")
        except ValueError as e:
            print(f"error: {e}")
            continue
        if shown:
            history.append((line, shown))
    return 0


def aspect_range(text: str) -> tuple[float, float]:
    """"1.78" -> (1.78, 1.78); "0.56-1.78" -> (0.56, 1.78)."""
    try:
        low, _, high = text.partition("-")
        return float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a factor (1.78) or a range (0.56-1.78)") from None


def run_scenes(args) -> int:
    import json

    from .scenes import write_dataset

    summary = write_dataset(args.out, args.n, args.seed, image_size=args.image_size,
                            force=args.force, workers=args.workers, wording=args.wording,
                            style=args.style, counting=args.counting,
                            locating=args.locating, typing=args.typing,
                            compression=args.compression, aspect=args.aspect)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def run_train(args) -> int:
    import dataclasses
    import json
    import logging

    from .train import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = [f"--{k}" for k in ("data", "out") if not getattr(args, k)]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (as flags or in --config)")
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    print(json.dumps(train(config)))
    return 0


def run_vqa(args) -> int:
    import json

    from .evaluate import run_vqa

    summary = run_vqa(args.data, args.out, checkpoint=args.checkpoint, device=args.device,
                      decode=args.decode,
                      max_new_tokens=args.max_new_tokens, limit=args.limit, zoom=args.zoom)
    print(json.dumps(summary, default=str))
    return 0


def run_eval(args) -> int:
    import json

    from .evaluate import baseline_predictions, read_predictions, read_questions, score

    questions = read_questions(args.data)[: args.limit]
    predictions = baseline_predictions(questions) if args.baseline else read_predictions(args.pred)
    result = score(questions, predictions)
    if result["missing"] == len(questions):
        print(f"cogvlm-lite eval: warning: none of the {len(questions)} questions has a prediction in "
              f"{args.pred}; are these the predictions for {args.data}?", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


def run_bench(args) -> int:
    from .bench import main as bench

    bench(args.json, args.quick, args.tokens, args.repeats, args.device)
    return 0


HISTORY_FILES = ("metrics.jsonl", "training-log.jsonl", "loss.png", "train_config.json")


def run_shrink(args) -> int:
    import json
    import shutil
    from pathlib import Path

    import torch

    from .model import (
        DEFAULT_CHECKPOINT,
        WEIGHTS_NAME,
        ModelConfig,
        atomic_write,
        check_shrink,
        load_model,
        read_checkpoint_config,
    )

    out = free_checkpoint_folder(args.out, args.force)
    source = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    check_shrink(ModelConfig.from_dict(read_checkpoint_config(source)["config"]).expert, args.rank)
    model = load_model(args.checkpoint, device="cpu", dtype=torch.float32)
    kept = model.shrink_expert(args.rank)
    model.save_pretrained(out, getattr(torch, args.save_dtype))
    # The training record (its held-out scores in metrics.jsonl included: how the weights got
    # here) goes with them; held-out figures of the checkpoint itself would no longer be theirs.
    copied = [name for name in HISTORY_FILES if (source / name).is_file()]
    for name in copied:
        atomic_write(out / name, lambda f, src=source / name: shutil.copyfile(src, f))
    print(json.dumps({"out": str(out), "rank": args.rank, "copied": copied,
                      "trainable_parameters": model.parameter_counts()["trainable"],
                      "smallest_energy_kept": round(kept, 6),
                      "megabytes": round((out / WEIGHTS_NAME).stat().st_size / 1e6, 2)}))
    return 0


def free_checkpoint_folder(folder: str, force: bool):
    """`folder` as a Path, unless it holds a checkpoint that `force` does not let us replace."""
    from pathlib import Path

    from .model import CONFIG_NAME, WEIGHTS_NAME

    out = Path(folder)
    if not force and ((out / CONFIG_NAME).exists() or (out / WEIGHTS_NAME).exists()):
        raise ValueError(f"{out} already holds a checkpoint; pass --force to replace it")
    return out


def run_average(args) -> int:
    import json

    import torch

    from .model import WEIGHTS_NAME, average_checkpoints

    out = free_checkpoint_folder(args.out, args.force)
    model = average_checkpoints(args.checkpoints, args.weights)
    model.save_pretrained(out, getattr(torch, args.save_dtype))
    weights = args.weights or [1.0] * len(args.checkpoints)
    print(json.dumps({"out": str(out), "checkpoints": args.checkpoints,
                      "weights": [w / sum(weights) for w in weights],
                      "megabytes": round((out / WEIGHTS_NAME).stat().st_size / 1e6, 2)}))
    return 0


def run_probe(args) -> int:
    import json
    import logging

    import torch

    from .model import ModelConfig, build_model
    from .prealign import probe_image_size, read_objects
    from .vision import VisionConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    read_objects(args.data), read_objects(args.eval_data)  # bad files fail before the model loads
    model = build_model(ModelConfig(vision=VisionConfig(image_size=args.image_size)),
                        device=args.device, dtype=torch.float32, seed=args.seed)
    print(json.dumps(probe_image_size(model, args.data, args.eval_data, args.images, args.epochs,
                                      args.seed)))
    return 0


def run_serve(args) -> int:
    from .serve import run_server

    check_port_free(args.host, args.port)
    run_server(host=args.host, port=args.port, checkpoint=args.checkpoint, device=args.device,
               decode=args.decode, api_key=args.api_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fine-tuning the visual expert and adapter; the language model and image encoder stay frozen.

bf16 autocast where bf16 products are fast (fp32 master weights, frozen weights kept in bf16 so
no step casts them; fp32 on CPUs without native bf16), AdamW
with warmup + cosine decay, gradient clipping and accumulation, frozen-encoder features computed
once. A run directory holds:

- `config.json` + `model.safetensors`: the checkpoint, loadable with `load_model(run_dir)`;
- `train_state.pt`: everything needed to resume exactly (weights, optimizer, schedule, RNG
  states, data position), written atomically;
- `train_config.json`, `metrics.jsonl` (one line per step, plus evaluations), `loss.png`.

Everything is checked (options, data, images, evaluation questions) before anything is written.
Ctrl-C stops after the step in progress and saves it (`--resume` goes on; a second Ctrl-C stops at
once); a loss that becomes NaN stops the run without saving over the last good weights.

Under `torchrun --nproc_per_node N` the same command trains with DDP (gloo on CPU, nccl on
GPU); each process takes its share of every global batch, and the loss is normalised by the
global count of labelled tokens, so the trajectory matches a single process.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import random
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from time import perf_counter as clock  # what `--minutes` counts; tests replace it

import numpy as np
import torch
import torch.distributed as dist

from .adapter import AdapterConfig
from .conversation import IGNORE
from .data import (
    BatchSampler,
    ConversationData,
    collate,
    encode_images,
    pack_by_image,
    read_conversations,
    usable_samples,
)
from .expert import ExpertConfig
from .fastdecode import onednn_bf16
from .model import (
    ModelConfig,
    VisionLanguageModel,
    atomic_write,
    build_model,
    exclusive,
    load_model,
    read_checkpoint_config,
)
from .train_config import TrainConfig
from .vision import VisionConfig

log = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"
RUN_FILES = (STATE_NAME, "metrics.jsonl", "loss.png", "model.safetensors", "config.json",
             "train_config.json")  # and eval-*.jsonl
CALIBRATION_STEPS = 10  # `--minutes` re-times the schedule's length this often
TIME_MARGIN = 0.95  # and plans steps for this share of the time left, so that slower steps fit


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The model a run from scratch builds: the defaults, with the run's expert and image size."""
    vision, expert = VisionConfig(), ExpertConfig()
    return ModelConfig(vision=VisionConfig(image_size=cfg.image_size or vision.image_size),
                       adapter=AdapterConfig(downsample=cfg.downsample),
                       expert=ExpertConfig(kind=cfg.expert or expert.kind,
                                           rank=cfg.rank or expert.rank))


class Trainer:
    def __init__(self, cfg: TrainConfig, locks: contextlib.ExitStack):
        """`locks` holds the run folder's lock (the main process's) until it closes."""
        self.began = clock()
        cfg.check()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.locks, self.locked = locks, False
        self.rank, self.world = setup_distributed()
        self.main = self.rank == 0
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"--batch-size {cfg.batch_size} must divide by processes x "
                             f"--grad-accum ({self.world} x {cfg.grad_accum})")
        if cfg.init_from:
            self._check_expert_options()
        resuming = cfg.resume and (self.out / STATE_NAME).is_file()
        if resuming:
            self._check_steps_left()
        self._check_run_dir()
        torch.manual_seed(cfg.seed)
        device = cfg.device
        if device == "auto" and self.world > 1 and torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        if cfg.init_from:
            self.model = load_model(cfg.init_from, device=device, dtype=torch.float32,
                                    image_size=cfg.image_size)
        else:
            self.model = build_model(model_config(cfg), device=device, dtype=torch.float32,
                                     seed=cfg.seed)
        model = self.model
        self.device = model.device
        samples = read_conversations(cfg.data, skip_bad=cfg.skip_bad)
        samples = usable_samples(samples, model.builder, model.adapter.num_tokens,
                                 skip_bad=cfg.skip_bad)
        if cfg.pack:
            samples = pack_by_image(samples)
        self.data = ConversationData(samples, model.builder, model.adapter.num_tokens)
        if cfg.eval_data:
            self._check_eval_data()
        if resuming:
            self._check_resumed_config()
        objects = None
        if cfg.prealign_epochs and not resuming:
            from .prealign import prealign, read_objects

            if not (cfg.cache_features and self.data.images):
                raise ValueError("--prealign-epochs needs cached encoder features of images; drop "
                                 "--no-cache-features" if self.data.images else
                                 "--prealign-epochs needs images: this data has none")
            objects = read_objects(cfg.data)
        self._prepare_run_dir()  # everything checked: only now is anything written
        self.features = None
        if cfg.cache_features and self.data.images:
            self.features = encode_images(model, self.data.images, progress=self.main)
        if objects is not None:
            prealign(model, objects, self.data.images, self.features, cfg.prealign_epochs,
                     lr=cfg.adapter_lr, seed=cfg.seed)
        pays = bf16_pays(self.device)
        bf16 = pays if cfg.bf16 is None else cfg.bf16
        if bf16 and not pays:
            log.warning("--bf16 on this CPU: it has no native bf16 products, so PyTorch runs them "
                        "many times slower than fp32; drop --bf16 to train in fp32")
        log.info("training in %s", "bf16 autocast" if bf16 else "fp32")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        if bf16:
            freeze_in(model, torch.bfloat16)
        adapter = [p for p in model.adapter.parameters()]
        expert = [p for n, p in model.lm.named_parameters() if ".expert." in n]
        self.optimizer = torch.optim.AdamW(
            [{"params": adapter, "lr": cfg.adapter_lr}, {"params": expert, "lr": cfg.lr}],
            weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.sampler = BatchSampler(len(self.data), cfg.batch_size // cfg.grad_accum, cfg.seed,
                                    self.rank, self.world, groups=cfg.length_groups,
                                    micro_batches=cfg.grad_accum,
                                    lengths=[self.data.tokens(i, model.adapter.num_tokens)
                                             for i in range(len(self.data))])
        self.step = self.saved_step = 0
        self.net = model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, broadcast_buffers=False,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if resuming:
            self._load_state()
        elif cfg.resume:
            log.warning("no %s in %s yet: nothing to resume, starting at step 0", STATE_NAME,
                        self.out)
            if self.main:
                keep_metrics_until(self.out / "metrics.jsonl", 0)
        counts = model.parameter_counts()
        log.info("parameters: trainable %s, frozen language model %s, frozen encoder %s",
                 f"{counts['trainable']:,}", f"{counts['language_model']:,}",
                 f"{counts['encoder']:,}")

    def lr_factor(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _check_expert_options(self) -> None:
        cfg = self.cfg
        expert = ModelConfig.from_dict(read_checkpoint_config(Path(cfg.init_from))["config"]).expert
        if cfg.expert not in (None, expert.kind) or cfg.rank not in (None, expert.rank):
            raise ValueError(f"--init-from {cfg.init_from} has a {expert.kind} expert of rank "
                             f"{expert.rank}; drop --expert and --rank to train it as it is "
                             "(`cogvlm-lite shrink` cuts a low-rank expert's rank)")

    def _check_steps_left(self) -> None:
        """Refuse, before anything is loaded or written, to resume a run where it would end."""
        cfg = self.cfg
        step = self._read_state(mmap=True)["step"]
        if step >= self._last_step():
            stop = f" --stop-at {cfg.stop_at}" if cfg.stop_at else ""
            raise ValueError(f"{self.out} is already at step {step}, where --steps {cfg.steps}{stop} "
                             "ends it: pass a later --stop-at, or more --steps, to train on")

    def _check_eval_data(self) -> None:
        """Read the evaluation questions, and decode the images of those evaluated, before training."""
        from .evaluate import read_questions
        from .images import load_image

        path = Path(self.cfg.eval_data)
        try:
            questions = read_questions(path)[: self.cfg.eval_limit]
        except (OSError, ValueError) as e:
            raise ValueError(f"--eval-data {e}") from e
        images = {}
        for question in questions:
            images.setdefault(path.parent / question["image"], question["id"])
        for image, qid in images.items():
            try:
                load_image(image)
            except ValueError as e:
                raise ValueError(f"--eval-data {path}, question {qid!r}: {e}") from e

    # ------------------------------------------------------------------ run directory

    def _check_run_dir(self) -> None:
        """Refuse, before anything is loaded, to write over another run, or to resume weights that
        have no training state."""
        cfg, out = self.cfg, self.out
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; name a folder for the run")
        weights_only = (out / "model.safetensors").is_file() and not (out / STATE_NAME).is_file()
        self._lock_run_dir()
        if cfg.resume and weights_only and not cfg.force:
            raise ValueError(f"{out} holds weights (model.safetensors) but no training state "
                             f"({STATE_NAME}) to resume from; to train those weights on, pass "
                             f"--init-from {out} with a new --out, or start over with --force")
        if self._holds_run() and not (cfg.resume or cfg.force):
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or "
                                  "--force to start over (its files are replaced)")

    def _lock_run_dir(self) -> None:
        """Lock OUT, if it is there yet, so that no other training run writes it meanwhile."""
        if self.main and not self.locked and self.out.is_dir():
            self.locks.enter_context(exclusive(self.out, f"another training run is writing {self.out}; "
                                                         "wait for it to finish, or name another --out"))
            self.locked = True

    def _holds_run(self) -> bool:
        """Whether OUT holds more than a run that stopped before its first save leaves."""
        out = self.out
        if not out.is_dir():
            return False
        if (out / STATE_NAME).exists() or (out / "model.safetensors").exists():
            return True
        return any(p.name not in RUN_FILES and not (p.name.startswith("eval-") and p.suffix == ".jsonl")
                   for p in out.iterdir())

    def _prepare_run_dir(self) -> None:
        cfg, out = self.cfg, self.out
        barrier(self.world)  # every process has looked before the main one writes
        if self.main:
            if not cfg.resume:  # a new run replaces what an earlier one left
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
                for old in out.glob("eval-*.jsonl"):
                    old.unlink()
            out.mkdir(parents=True, exist_ok=True)
            self._lock_run_dir()
            text = json.dumps(asdict(cfg), indent=2)
            atomic_write(out / "train_config.json", lambda f: Path(f).write_text(text))
        barrier(self.world)

    def _state(self) -> dict:
        return {
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.trainable_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
            "model_config": self.model.config.to_dict(),
        }

    def save(self) -> None:
        """Write the checkpoint and the training state (on the main process); never NaN weights."""
        if not all(torch.isfinite(v).all() for v in self.model.trainable_state_dict().values()):
            raise self._diverged("the weights became NaN or infinite")
        if self.main:
            state = self._state()
            atomic_write(self.out / STATE_NAME, lambda f: torch.save(state, f))
            self.model.save_pretrained(self.out, getattr(torch, self.cfg.save_dtype))
        self.saved_step = self.step

    def _diverged(self, what: str) -> RuntimeError:
        saved = (f"the last good weights were saved at step {self.saved_step} in {self.out}"
                 if self.saved_step else "nothing was saved")
        return RuntimeError(f"{what} at step {self.step}; {saved}; try a lower --lr")

    def _read_state(self, mmap: bool = False) -> dict:
        path = self.out / STATE_NAME
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as e:  # torch raises several types for damaged files
            raise ValueError(f"{path} is damaged and cannot be read ({type(e).__name__}); start over "
                             "with --force") from e

    def _check_resumed_config(self) -> None:
        """Refuse, before anything is written, to resume a run saved with another model."""
        if self._read_state(mmap=True)["model_config"] != self.model.config.to_dict():
            raise ValueError(f"{self.out / STATE_NAME} was saved with another model configuration; "
                             "resume with the same options or start over with --force")

    def _load_state(self) -> None:
        state = self._read_state()
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.step = self.saved_step = state["step"]
        if self.main:
            keep_metrics_until(self.out / "metrics.jsonl", self.step)
        log.info("resumed %s at step %d", self.out, self.step)

    # ------------------------------------------------------------------ steps

    def batch(self):
        """(input_ids, labels, image features, tokens) of this process's share of a batch."""
        indices = self.sampler.next()
        items = [self.data.items[i] for i in indices]
        tokens = sum(self.data.tokens(i, self.model.adapter.num_tokens) for i in indices)
        ids, labels, images = collate(items, self.model.tokenizer.pad_token_id or 0)
        rows = [k for k in images if k >= 0]
        features = None
        if rows:
            if self.features is not None:
                features = self.features[rows].to(self.device)
            else:
                pixels = self.model.pixels([str(self.data.images[k]) for k in rows])
                features = self.model.encoder(pixels.to(self.device))
        return ids.to(self.device), labels.to(self.device), features, tokens

    def train_step(self) -> dict:
        cfg = self.cfg
        micro = [self.batch() for _ in range(cfg.grad_accum)]
        # Labelled next-token targets, over every micro-batch and process.
        count = torch.tensor(float(sum(int((m[1][:, 1:] != IGNORE).sum()) for m in micro)))
        tokens = sum(m[3] for m in micro)
        count = all_reduce(count, self.world)
        total = torch.zeros(())
        self.model.train()
        for k, (ids, labels, features, _) in enumerate(micro):
            # DDP averages gradients only after the last micro-batch.
            defer = self.world > 1 and k < len(micro) - 1
            with self._autocast(), self.net.no_sync() if defer else contextlib.nullcontext():
                out = self.net(input_ids=ids, image_features=features, labels=labels,
                               loss_reduction="sum")
                loss = out.loss * self.world / count.clamp(min=1)
            loss.backward()
            total += out.loss.detach().float().cpu()
        trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        total = all_reduce(total, self.world)
        return {"step": self.step, "loss": float(total / count.clamp(min=1)),
                "lr": self.scheduler.get_last_lr()[1], "grad_norm": float(grad_norm),
                "tokens": tokens * self.world}

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def fit(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.main, unit="step",
                   dynamic_ncols=True)
        last = {}
        first = self.step
        with stop_requests() as requests, contextlib.closing(bar):
            while self.step < self._last_step():
                if self._stop_requested(requests):
                    bar.close()
                    self._stop()
                start = clock()
                last = self.train_step()
                seconds = clock() - start
                for key, what in (("loss", "the loss"), ("grad_norm", "the gradient norm")):
                    if not math.isfinite(last[key]):
                        raise self._diverged(f"{what} became {last[key]}")
                if cfg.minutes:
                    self._keep_to_budget(self.step - first)
                    bar.total = cfg.steps
                last["tokens_per_s"] = round(last["tokens"] / seconds, 1)
                last["seconds"] = round(seconds, 3)
                if self.main:
                    append_metrics(self.out / "metrics.jsonl", last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}")
                    bar.update(1)
                done = self.step == self._last_step()
                if cfg.save_every and self.step % cfg.save_every == 0 or done:
                    self.save()
                # Ctrl-C skips an evaluation on the way, not the final one.
                periodic = cfg.eval_every and self.step % cfg.eval_every == 0 and not requests
                if cfg.eval_data and (done or periodic):
                    self.evaluate()
                barrier(self.world)
        if self.main:
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")
        return last

    def _stop_requested(self, requests: list) -> bool:
        """Whether Ctrl-C reached any process (all of them then stop after the same step)."""
        asked = torch.tensor(float(len(requests)), device=self.device)
        return bool(all_reduce(asked, self.world) > 0)

    def _stop(self) -> None:
        """End the run as Ctrl-C asked, with the step reached saved."""
        if self.step > self.saved_step:
            self.save()
        if self.main:
            if self.step:
                plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")
                log.info("stopped at step %d; saved in %s; continue with --resume", self.step,
                         self.out)
            else:
                log.info("stopped before the first step; nothing to save")
        barrier(self.world)
        raise KeyboardInterrupt

    def _last_step(self) -> int:
        """Where this run ends: `steps`, or `stop_at` to train in legs (resume for the next)."""
        cfg = self.cfg
        return min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps

    def _keep_to_budget(self, done: int) -> None:
        """End this run within `--minutes` of its start (loading and feature caching included).

        From `CALIBRATION_STEPS` steps on (the first, with its lazy initialisation, left out of
        the timing), and every `CALIBRATION_STEPS` steps after, the schedule's length is set to
        the steps that fit in `TIME_MARGIN` of the time left, so the cosine decay still completes;
        the run also stops outright once the time is up.
        """
        cfg, now = self.cfg, clock()
        budget = cfg.minutes * 60 - (now - self.began)
        if done == 1:
            self._first_step_done, self._planned_steps = now, cfg.steps
        elif done % CALIBRATION_STEPS == 0:
            per_step = (now - self._first_step_done) / (done - 1)
            steps = min(self._planned_steps, self.step + int(TIME_MARGIN * budget / per_step))
            if steps != cfg.steps and done == CALIBRATION_STEPS:
                log.info("%.3f s per step: about %d steps fit in --minutes %g",
                         per_step, steps, cfg.minutes)
            cfg.steps = max(self.step, steps)
        if budget <= 0:
            cfg.steps = self.step

    def evaluate(self) -> dict | None:
        if not self.main:
            return None
        from .evaluate import read_predictions, read_questions, run_vqa, score

        pred = self.out / f"eval-{self.step:06d}.jsonl"
        pred.unlink(missing_ok=True)
        self.model.eval()
        self.model.reset()
        with self._autocast():
            run_vqa(self.cfg.eval_data, pred, model=self.model, limit=self.cfg.eval_limit,
                    max_new_tokens=self.cfg.eval_max_new_tokens)
        self.model.reset()
        predictions = read_predictions(pred)
        answered = {p["id"] for p in predictions}
        questions = [q for q in read_questions(self.cfg.eval_data) if q["id"] in answered]
        scores = score(questions, predictions)
        append_metrics(self.out / "metrics.jsonl", {"step": self.step, "eval": scores})
        log.info("step %d evaluation: %s", self.step, json.dumps(scores))
        return scores


@contextlib.contextmanager
def stop_requests():
    """While training, Ctrl-C (SIGINT) asks to stop after the step in progress: the list given
    gains an entry. A second Ctrl-C stops at once (KeyboardInterrupt, nothing saved)."""
    requests = []
    if threading.current_thread() is not threading.main_thread():  # signals reach only that one
        yield requests
        return

    def ask(signum, frame):
        if requests:
            raise KeyboardInterrupt
        requests.append(signum)

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield requests
    finally:
        signal.signal(signal.SIGINT, previous)


def freeze_in(model: VisionLanguageModel, dtype: torch.dtype) -> None:
    """Keep the frozen language-model weights in the compute dtype (no per-step casts)."""
    for p in model.lm.parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)


def setup_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def all_reduce(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric lines after `step` (a resumed run writes them again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            continue  # a line cut short by the kill that stopped the run
    text = "".join(k + "\n" for k in kept)
    atomic_write(path, lambda f: Path(f).write_text(text))


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up here: on a GPU, and on a CPU whose oneDNN runs bf16
    products (elsewhere PyTorch's reference bf16 kernel is many times slower than fp32)."""
    return device.type != "cpu" or onednn_bf16()


def plot_losses(metrics: Path, png: Path, size=(720, 360)) -> None:
    """A plain loss curve drawn with Pillow."""
    from PIL import Image, ImageDraw

    points = []
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            points.append((r["step"], r["loss"]))
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h, m = size[0], size[1], 40
    draw.rectangle([m, 10, w - 10, h - m], outline="black")
    if points:
        steps = [p[0] for p in points]
        losses = [p[1] for p in points]
        lo, hi = min(losses), max(losses)
        x0, x1 = min(steps), max(max(steps), min(steps) + 1)
        span = (hi - lo) or 1.0

        def xy(s, v):
            return (m + (s - x0) / (x1 - x0) * (w - 10 - m), h - m - (v - lo) / span * (h - m - 20))

        draw.line([xy(s, v) for s, v in points], fill=(31, 119, 180), width=2)
        draw.text((m, h - m + 5), f"step {x0}", fill="black")
        draw.text((w - 90, h - m + 5), f"step {x1}", fill="black")
        draw.text((2, 12), f"{hi:.3f}", fill="black")
        draw.text((2, h - m - 12), f"{lo:.3f}", fill="black")
    draw.text((w // 2 - 30, h - 20), "training loss", fill="black")
    atomic_write(png, lambda f: image.save(f, format="PNG"))


def train(cfg: TrainConfig) -> dict:
    with contextlib.ExitStack() as locks:
        trainer = Trainer(cfg, locks)
        try:
            last = trainer.fit()
            barrier(trainer.world)  # every rank done before any leaves
            return last
        finally:
            if trainer.world > 1 and dist.is_initialized():
                # DDP's reducer goes before the process group it uses: left to interpreter exit,
                # its teardown now and then aborted a rank.
                trainer.net = None
                gc.collect()
                dist.destroy_process_group()


"""The options of a training run (`cogvlm-lite train`'s flags), importable without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

SMALLEST_IMAGE = 32  # the image encoder's stride: the side of one feature cell
LARGEST_IMAGE = 1536  # the largest image size a checkpoint may have


@dataclass
class TrainConfig:
    data: str
    out: str
    eval_data: str | None = None
    init_from: str | None = None  # warm start from a checkpoint (its model configuration)
    steps: int = 1000
    stop_at: int = 0  # end this run after this step (saved), the schedule still sized by steps
    minutes: float = 0.0  # wall-clock budget of this run, from loading to the last step; 0: none
    batch_size: int = 16  # conversations per optimizer step (global, over all processes)
    grad_accum: int = 1  # micro-batches per step (each batch_size / grad_accum)
    lr: float = 1e-3  # visual expert
    adapter_lr: float = 3e-3  # adapter, position embeddings, BOI/EOI
    weight_decay: float = 0.0
    warmup: int = 50
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    seed: int = 0
    save_every: int = 100
    eval_every: int = 0  # 0: evaluate only at the end (when eval_data is given)
    eval_limit: int = 200
    eval_max_new_tokens: int = 160
    bf16: bool | None = None  # bf16 autocast; default: where products run fast in bf16
    save_dtype: str = "float32"  # of the exported checkpoint; "bfloat16" halves its size
    cache_features: bool = True
    pack: bool = False  # merge the conversations about one image into multi-turn ones
    length_groups: int = 16  # batches drawn together and sorted by length (less padding); 1: off
    prealign_epochs: int = 0  # adapter head start on object-name embeddings (scenes data)
    skip_bad: bool = False
    device: str = "auto"
    expert: str | None = None  # "lowrank" (default) or "full"; with init_from, the checkpoint's
    rank: int | None = None  # 32 by default; with init_from, the checkpoint's
    image_size: int | None = None  # 256 by default; with init_from, another stretches its grid
    downsample: bool = False
    resume: bool = False
    force: bool = False

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Refuse values no run can use, naming the option (a configuration can change after it is made)."""
        if self.save_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"save_dtype must be float32, bfloat16 or float16, not {self.save_dtype!r}")
        for name in ("steps", "batch_size", "grad_accum", "length_groups", "eval_limit",
                     "eval_max_new_tokens"):
            self._check_whole(name, 1)
        for name in ("stop_at", "warmup", "save_every", "eval_every", "prealign_epochs", "seed"):
            self._check_whole(name, 0)
        if self.rank is not None:
            self._check_whole("rank", 1)
        if self.image_size is not None:
            smallest = 2 * SMALLEST_IMAGE if self.downsample else SMALLEST_IMAGE
            self._check_whole("image_size", smallest, " with --downsample" if self.downsample else "")
            if self.image_size > LARGEST_IMAGE:
                raise ValueError(f"--image-size must be at most {LARGEST_IMAGE}, got {self.image_size}")
        for name in ("lr", "adapter_lr", "clip"):
            if not self._finite(name) or getattr(self, name) <= 0:
                raise ValueError(f"{flag(name)} must be a finite number above 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "min_lr_ratio"):
            if not self._finite(name) or getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must be a finite number, at least 0, got "
                                 f"{getattr(self, name)!r}")
        if not self._finite("minutes") or self.minutes < 0:
            raise ValueError(f"--minutes must be above 0 (or 0 for no limit), got {self.minutes!r}")

    def _check_whole(self, name: str, least: int, condition: str = "") -> None:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{flag(name)} must be a whole number, got {value!r}")
        if value < least:
            raise ValueError(f"{flag(name)} must be at least {least}{condition}, got {value}")

    def _finite(self, name: str) -> bool:
        value = getattr(self, name)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flag(name: str) -> str:
    """The command-line option of a field: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")

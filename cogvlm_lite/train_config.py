"""The options of a training run (`cogvlm-lite train`'s flags), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


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
        if self.save_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"save_dtype must be float32, bfloat16 or float16, not {self.save_dtype!r}")

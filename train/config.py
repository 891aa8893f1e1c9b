"""The trainer's typed configuration and its closed choice sets (importable without torch).

The CLI builds a TrainConfig from its flags; the trainer saves it as a plain dict in
RUN/config.json and in every checkpoint; `load_run_config` reads it back for `--resume`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from satpipe.errors import SatpipeError


class Optimizer(str, Enum):
    adam = "adam"
    sgd = "sgd"


class Schedule(str, Enum):
    none = "none"
    cosine = "cosine"
    step = "step"


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LoaderMode(str, Enum):
    auto = "auto"
    resident = "resident"
    streaming = "streaming"


# Keys that may change when resuming a run; every other key must match the checkpoint's.
RESUMABLE_CHANGES = frozenset({"epochs", "resume", "overwrite", "device", "out"})


@dataclass
class TrainConfig:
    """Everything one training run depends on. Defaults: the paper's preset (Adam 1e-3,
    batch 128, 100 epochs, eps 8/255, crop+flip augmentation).

    eps and attack_step_size are in /255 units (8.0 means 8/255), as on the command line.
    `storage_options` (fsspec credentials and endpoints) is never written to disk.
    """

    variant: str
    data: str
    out: str
    saliency: str | None = None
    model: str = "resnet10"
    epochs: int = 100
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    seed: int = 0
    device: str = "auto"
    eps: float = 8.0
    attack_steps: int = 7
    attack_step_size: float = 2.0
    p_mix: float = 0.5
    alpha_base: float = 0.6
    trades_beta: float = 6.0
    augment: bool = True
    loader_mode: str = "auto"
    resume: bool = False
    overwrite: bool = False
    amp: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Plain strings, not enum members: the config is saved as a plain dict.
        for name, enum in (
            ("optimizer", Optimizer),
            ("schedule", Schedule),
            ("device", DeviceChoice),
            ("loader_mode", LoaderMode),
        ):
            value = getattr(self, name)
            try:
                setattr(self, name, enum(value).value)
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise SatpipeError(f"unknown {name} '{value}'; choose one of {choices}") from None
        from satpipe.train.variants import get_variant  # torch: only when a config is built

        self.variant = get_variant(str(getattr(self.variant, "value", self.variant))).name
        if self.epochs < 1 or self.batch_size < 1:
            raise SatpipeError("epochs and batch size must be at least 1")
        if self.lr <= 0:
            raise SatpipeError(f"learning rate must be > 0, got {self.lr}")
        self.variant_config()  # validates eps, steps, p_mix, alpha base, beta

    def variant_config(self):
        """The variants' hyper-parameters in pixel units (a VariantConfig)."""
        from satpipe.train.variants import VariantConfig

        return VariantConfig(
            eps=self.eps / 255,
            attack_steps=self.attack_steps,
            attack_step_size=self.attack_step_size / 255,
            p_mix=self.p_mix,
            alpha_base=self.alpha_base,
            trades_beta=self.trades_beta,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for config.json and the checkpoint (no storage options)."""
        d = dataclasses.asdict(self)
        d.pop("storage_options")
        return d


def load_run_config(run_dir: str | os.PathLike, **changes: Any) -> TrainConfig:
    """The TrainConfig saved in RUN/config.json, with `changes` applied (e.g. epochs=200)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise SatpipeError(f"{path}: no run config here (is {run_dir} a satpipe run directory?)")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SatpipeError(f"{path}: not valid JSON ({exc.msg})") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in saved.items() if k in known}
    saved.update({k: v for k, v in changes.items() if v is not None})
    return TrainConfig(**saved)

"""The trainer's typed configuration (importable without torch).

The CLI builds a TrainConfig from its flags (one option per field, defaults from here);
the trainer saves it as a plain dict in RUN/config.json and in every checkpoint;
`run_config` reads it back for `--resume`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from satpipe.core.device import DETERMINISTIC_HELP, DEVICE_HELP
from satpipe.core.errors import SatpipeError
from satpipe.core.options import (
    check_choice,
    coerce_fields,
    field_default,
    option,
    parse_list,
    storage_options_field,
)
from satpipe.data.metadata import bounded_json


class Optimizer(str, Enum):
    adam = "adam"
    sgd = "sgd"


# Keys that may change when resuming a run; every other key must match the checkpoint's.
RESUMABLE_CHANGES = frozenset({"epochs", "resume", "overwrite", "device", "out"})
_VARIANTS = "satpipe.train.variants:VARIANTS"
_SCHEDULES = "satpipe.train.schedules:SCHEDULES"
_ALPHA_SCHEDULES = "satpipe.train.alpha_schedules:ALPHA_SCHEDULES"
_PAIRINGS = ("matched", "shuffled")
_LOADER_MODES = "satpipe.data.loader:LoaderMode"
# PGD eps (/255) of the "a very large eps drives accuracy near chance" sanity check.
LARGE_EPS = 64.0
MODEL_HELP = (
    "Architecture: a built-in name, torchvision:NAME, timm:NAME or package.module:callable "
    "(`satpipe list models`, `satpipe list model-sources`)."
)
INPUT_MEAN_HELP = (
    "Per-channel mean the model's layers expect its [0, 1] input normalised with, e.g. "
    "0.485,0.456,0.406 (default: the model source's; ImageNet for torchvision)."
)
INPUT_STD_HELP = "Per-channel std to go with --input-mean (default: the model source's)."


def check_model_options(model: str, mean, std) -> None:
    """Validate --model by resolving it (nothing is built; imports torch) and the norm."""
    from satpipe.train.models import check_model_name

    check_model_name(model)
    for flag, values in (("--input-mean", mean), ("--input-std", std)):
        if values is not None and not values:
            raise SatpipeError(f"{flag} needs at least one value")
    if std is not None and any(not v > 0 for v in std):
        raise SatpipeError(f"--input-std must be > 0, got {list(std)}")


@dataclass
class TrainConfig:
    """Everything one training run depends on. Defaults: the paper's preset (Adam 1e-3,
    batch 128, 100 epochs, eps 8/255, crop+flip augmentation).

    eps and attack_step_size are in /255 units (8.0 means 8/255), as on the command line.
    `storage_options` (fsspec credentials and endpoints) is never written to disk.
    """

    variant: str = option(help="Training variant (`satpipe list variants`).", choices=_VARIANTS)
    data: str = option(help="Dataset store (path or URL).")
    out: str = option(help="Run directory (config, checkpoint, metrics).")
    saliency: str | None = option(
        None, "Saliency store made for --data (the SAT variants need one)."
    )
    model: str = option("resnet10", MODEL_HELP)
    input_mean: tuple[float, ...] | None = option(None, INPUT_MEAN_HELP)
    input_std: tuple[float, ...] | None = option(None, INPUT_STD_HELP)
    epochs: int = option(100, "Epochs (on --resume: extend or shorten the run).")
    batch_size: int = option(128, "Images per batch (per rank).")
    optimizer: str = option("adam", "Optimizer.", choices=Optimizer)
    lr: float = option(1e-3, "Learning rate.")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(0.0, "L2 weight decay.")
    lr_schedule: str = option(
        "none",
        "Learning-rate schedule: a function of the epoch (and step) and --epochs.",
        choices=_SCHEDULES,
    )
    seed: int = option(0, "Seed of weights, order, coins and noise.")
    device: str = option("auto", DEVICE_HELP)
    eps: float = option(8.0, "Perturbation size, /255 units.")
    attack_steps: int = option(7, "K: PGD/TRADES training steps.")
    attack_step_size: float = option(2.0, "Attack step, /255 units.")
    p_mix: float = option(0.5, "Chance a mixed variant's batch trains on x_sat/x_noise.")
    alpha_schedule: str = option(
        "progress",
        "SAT's alpha (chance an element is noise, not the map): progress = a^(p*H/10) with p "
        "the share of the run done, per step (the paper's 100-epoch curve on any run length); "
        "epoch = a^(t/10) per epoch t (the paper's code: mostly noise on short runs); "
        "constant = a (1: SAT without saliency, 0: the map alone).",
        choices=_ALPHA_SCHEDULES,
    )
    alpha_base: float = option(0.6, "a of the alpha schedule, in [0, 1].")
    alpha_horizon: float = option(
        100.0, "H of --alpha-schedule progress: the run is mapped onto H epochs (paper: 100)."
    )
    saliency_pairing: str = option(
        "matched",
        "matched: each image gets its own map; shuffled: the map of another image of the "
        "split (a seeded derangement fixed for the run, RUN/pairing.json): the content control.",
        choices=_PAIRINGS,
    )
    trades_beta: float = option(6.0, "TRADES KL weight.")
    # The baselines' hyper-parameters; defaults and their sources: VariantConfig.
    fgsm_step_ratio: float = option(
        1.25, "fgsm-rs: FGSM step / eps (Wong et al. 2020: alpha = 1.25 eps)."
    )
    free_replays: int = option(
        8, "free: m, replays per minibatch; runs ceil(epochs/m) passes (Shafahi et al.: 8)."
    )
    rrr_lambda: float = option(1000.0, "rrr: right-reasons weight (Ross et al. 2017: 1000).")
    igr_lambda: float = option(
        10.0, "igr: input-gradient penalty weight (inside Ross & Doshi-Velez's sweep)."
    )
    sgt_fraction: float = option(
        0.1, "sgt: share k of pixels masked (Ismail et al. 2021, CIFAR-10: 0.1)."
    )
    sgt_lambda: float = option(1.0, "sgt: KL weight (Ismail et al.'s code: 1).")
    nfgsm_noise: float = option(
        2.0, "n-fgsm: noise U(-k eps, k eps), k as a multiple of eps (de Jorge et al. 2022: 2)."
    )
    gradalign_lambda: float = option(
        0.2, "gradalign: weight of 1 - cos (Andriushchenko & Flammarion 2020, eps 8/255: 0.2)."
    )
    energy_lambda: float = option(
        1e-3, "energy: energy-loss weight, summed over images (Rao, Böhle et al. 2023: 1e-3)."
    )
    guard_rows: int = option(
        0,
        "Catastrophic-overfitting guard: hold out this many seeded training rows (never "
        "trained on), PGD them every epoch; 0 = off.",
    )
    guard_drop: float = option(
        0.2, "Guard: stop when held-out PGD accuracy falls this much below its best (Wong: 0.2)."
    )
    guard_steps: int = option(5, "Guard: PGD steps (Wong et al.'s check: 5).")
    guard_step_size: float = option(2.0, "Guard: PGD step, /255 units (Wong et al.: 2).")
    augment: bool = option(True, "RandomCrop(pad 4) + flip, joint on image and map.")
    loader_mode: str = option(
        "auto",
        "resident (on the device), streaming, or auto (resident when it fits).",
        choices=_LOADER_MODES,
    )
    resume: bool = option(False, "Continue RUN from its last finished epoch (flags optional).")
    overwrite: bool = option(False, "Start RUN over.")
    amp: bool = option(True, "bf16 autocast (CUDA only).")
    deterministic: bool = option(False, DETERMINISTIC_HELP)
    storage_options: dict[str, Any] = storage_options_field()

    def __post_init__(self) -> None:
        coerce_fields(self)
        # Plain strings, not enum members: the config is saved as a plain dict.
        # The registries import torch: only when a config is built, not when flags are shown.
        self.optimizer = check_choice(self.optimizer, Optimizer, "optimizer")
        self.loader_mode = check_choice(self.loader_mode, _LOADER_MODES, "loader mode")
        self.lr_schedule = check_choice(self.lr_schedule, _SCHEDULES, "lr schedule")
        self.variant = check_choice(self.variant, _VARIANTS, "variant")
        self.alpha_schedule = check_choice(self.alpha_schedule, _ALPHA_SCHEDULES, "alpha schedule")
        self.saliency_pairing = check_choice(self.saliency_pairing, _PAIRINGS, "saliency pairing")
        if self.saliency_pairing == "shuffled":
            from satpipe.train.variants import VARIANTS

            if not VARIANTS.get(self.variant).needs_saliency:
                raise SatpipeError(
                    f"--saliency-pairing shuffled: variant '{self.variant}' uses no saliency maps"
                )
        check_model_options(self.model, self.input_mean, self.input_std)
        if self.epochs < 1 or self.batch_size < 1:
            raise SatpipeError("epochs and batch size must be at least 1")
        if self.lr <= 0:
            raise SatpipeError(f"learning rate must be > 0, got {self.lr}")
        if self.guard_rows < 0 or self.guard_steps < 1 or self.guard_step_size <= 0:
            raise SatpipeError("--guard-rows must be >= 0, --guard-steps >= 1, step size > 0")
        if not 0.0 < self.guard_drop <= 1.0:
            raise SatpipeError(f"--guard-drop must be in (0, 1], got {self.guard_drop}")
        self.variant_config()  # validates eps, steps, p_mix, alpha, beta, the lambdas, m, k

    def variant_config(self):
        """The variants' hyper-parameters in pixel units (a VariantConfig)."""
        from satpipe.train.variants import VariantConfig

        return VariantConfig(
            eps=self.eps / 255,
            attack_steps=self.attack_steps,
            attack_step_size=self.attack_step_size / 255,
            p_mix=self.p_mix,
            alpha_base=self.alpha_base,
            alpha_schedule=self.alpha_schedule,
            alpha_horizon=self.alpha_horizon,
            trades_beta=self.trades_beta,
            fgsm_step_ratio=self.fgsm_step_ratio,
            free_replays=self.free_replays,
            rrr_lambda=self.rrr_lambda,
            igr_lambda=self.igr_lambda,
            sgt_fraction=self.sgt_fraction,
            sgt_lambda=self.sgt_lambda,
            nfgsm_noise=self.nfgsm_noise,
            gradalign_lambda=self.gradalign_lambda,
            energy_lambda=self.energy_lambda,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for config.json and the checkpoint (no storage options)."""
        d = dataclasses.asdict(self)
        d.pop("storage_options")
        return d


# Keys older runs saved under another name: {old: new}. An old run's config.json and
# checkpoint are read through `upgrade_saved`, so a run from before a rename still resumes.
RENAMED = {"schedule": "lr_schedule"}
# Fields added since with a default that differs from what older runs did: an old run
# resumes with the behaviour it had (its SAT followed the per-epoch formula).
SAVED_BEFORE = {"alpha_schedule": "epoch"}


def upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict in today's keys: renamed keys mapped, fields added since it was
    written filled with their defaults (the behaviour the old run had: the new fields
    configure variants and options that did not exist then)."""
    out = {RENAMED.get(k, k): v for k, v in saved.items()}
    if out:  # an empty dict is no saved run
        out = {**{k: v for k, v in SAVED_BEFORE.items() if k not in out}, **out}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in out and f.name != "storage_options":
            default = field_default(f)
            if default is not dataclasses.MISSING:
                out[f.name] = default
    return out


def run_config(run_dir: str | os.PathLike, **changes: Any) -> TrainConfig:
    """The TrainConfig saved in RUN/config.json with `changes` applied (e.g. epochs=200).

    What may differ from the saved run on resume is checked by the trainer against the
    checkpoint (RESUMABLE_CHANGES), so a changed `lr` here is refused there, never ignored.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise SatpipeError(f"{path}: no run config here (is {run_dir} a satpipe run directory?)")
    try:
        saved = bounded_json(path.read_bytes(), str(path))  # a crafted one: one line
    except json.JSONDecodeError as exc:
        raise SatpipeError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(saved, dict):
        raise SatpipeError(f"{path}: not a run config (a JSON object)")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in upgrade_saved(saved).items() if k in known}
    saved.update({k: v for k, v in changes.items() if v is not None})
    return TrainConfig(**saved)


def train_config(given: dict[str, Any]) -> TrainConfig:
    """The config of `satpipe train` from the flags a user gave: `--resume --out RUN` alone
    continues RUN with its saved settings (any other flag given is a change to it, checked on
    resume); otherwise --variant, --data and --out are required."""
    if given.get("resume") and (Path(given.get("out", "")) / "config.json").is_file():
        return run_config(given["out"], **given)
    missing = [k for k in ("variant", "data", "out") if k not in given]
    if missing:
        flags = ", ".join("--" + k for k in missing)
        raise SatpipeError(f"missing {flags} (or --resume --out RUN to continue a run)")
    return TrainConfig(**given)


_ATTACKS = "satpipe.train.eval.attacks:ATTACKS"
_DISTORTIONS = "satpipe.train.eval.distortions:DISTORTIONS"
# Attacks whose eps grid always includes 0: the "eps = 0 gives the clean accuracy" check.
ZERO_EPS_ATTACKS = ("fgsm", "pgd")


@dataclass
class EvalConfig:
    """`satpipe eval`: robustness of a trained model on the test split
    (satpipe.train.eval.evaluate).

    eps and step sizes in /255 units. Every attack in `attacks` runs at every eps of `eps`
    (`attack_eps` overrides that per attack, e.g. {"autoattack": (8,)}; an L2 attack runs at
    its own radii, e.g. cw-l2 at 32,64,127.5,255, unless `attack_eps` names it) and, when it is
    randomized, once per seed; fgsm and pgd always also run at eps 0. `n_examples` evaluates a
    seeded class-stratified subset of that size (`subset_seed`; the same for every run, so runs
    stay paired image for image); `attack_examples` gives an attack fewer images (the first n of
    that subset). `autoattack_components`: AutoAttack's attacks to run (default: the standard
    version; anything else is reported as a custom version). `strict`: raise (after writing
    the results) when a gradient-masking sanity check fails; `tolerance` (fraction) absorbs
    random starts (default max(1%, 2/n)); `large_eps_margin`: how far above chance the
    large-eps check allows.
    """

    run: str = option(help="Run directory (its checkpoint.pt) or a checkpoint.", argument=True)
    data: str | None = option(None, "Dataset store (default: the one the run trained on).")
    attacks: tuple[str, ...] = option(
        ("fgsm", "pgd"), "Attacks to run (`satpipe list attacks`), e.g. fgsm,pgd,autoattack.",
        flag="--attack", short="-a", choices=_ATTACKS,
    )  # fmt: skip
    eps: tuple[float, ...] = option(
        (0, 1, 2, 3, 4, 8), "L-inf eps grid, /255 units (L2 attacks: their radii, or -E)."
    )
    attack_eps: dict[str, Any] = option(
        {}, "Eps of one attack instead of the grid: NAME=EPS[,EPS] (repeatable), "
        "e.g. autoattack=8.", flag="--attack-eps", short="-E",
    )  # fmt: skip
    n_examples: int | None = option(
        None, "Evaluate a seeded class-stratified subset of this many test images."
    )
    attack_examples: dict[str, Any] = option(
        {}, "Fewer images for one attack: NAME=N (the first N of the subset; repeatable), "
        "e.g. autoattack=1000.", flag="--attack-examples",
    )  # fmt: skip
    check_examples: int | None = option(
        None, "Images of the sanity checks' two extra PGD runs (large eps, 2x steps): the "
        "first N of the subset (default: all).",
    )  # fmt: skip
    subset_seed: int = option(0, "Seed of the stratified subset (keep it for paired runs).")
    steps: int = option(5, "PGD / PGD-CW steps.")
    step_size: float = option(2.0, "PGD / PGD-CW step size, /255 units.")
    restarts: int = option(1, "PGD / PGD-CW random restarts (per-image worst case).")
    seeds: tuple[int, ...] = option((0,), "Seeds of the randomized attacks, e.g. 0,1,2.")
    autoattack_components: tuple[str, ...] | None = option(
        None, "AutoAttack's attacks (default: the standard apgd-ce,apgd-t,fab-t,square).",
        choices=_ATTACKS,
    )  # fmt: skip
    distortions: tuple[str, ...] = option(
        (), "Also the accuracy under these distortions per level, e.g. contrast,low-pass,"
        "high-pass (`satpipe list distortions`; the SAT code's tests).", choices=_DISTORTIONS,
    )  # fmt: skip
    distortion_levels: dict[str, Any] = option(
        {}, "Levels of one distortion instead of the SAT code's grid: NAME=L[,L] "
        "(repeatable), e.g. low-pass=1,4,16.", flag="--distortion-levels",
    )  # fmt: skip
    batch_size: int = option(256, "Images per attack batch.")
    device: str = option("auto", DEVICE_HELP)
    deterministic: bool = option(False, DETERMINISTIC_HELP)
    large_eps: float = option(LARGE_EPS, "Eps (/255) of the 'drives accuracy near 0' check.")
    strict: bool = option(True, "Exit non-zero when a sanity check fails.")
    allow_running: bool = option(
        False, "Evaluate a run that is still training (the epoch its checkpoint holds now; "
        "recorded as `running` in results.json).",
    )  # fmt: skip
    out: str | None = option(None, "Directory for results (default: RUN).")
    storage_options: dict[str, Any] = storage_options_field()
    large_eps_margin: float = option(0.05, cli=False)
    tolerance: float | None = option(None, cli=False)

    def __post_init__(self) -> None:
        coerce_fields(self)
        self.attacks = tuple(
            dict.fromkeys(check_choice(a, _ATTACKS, "attack") for a in self.attacks)
        )
        if not self.attacks:
            raise SatpipeError("--attack names no attack")
        if self.steps < 1 or self.step_size <= 0 or not self.seeds or self.restarts < 1:
            raise SatpipeError(
                "PGD needs steps >= 1, step size > 0, restarts >= 1 and at least one seed"
            )
        _check_eps(self.eps, "--eps")
        self.attack_eps = {
            self._attack_key(k, "--attack-eps"): _eps_tuple(v) for k, v in self.attack_eps.items()
        }
        self.attack_examples = {
            self._attack_key(k, "--attack-examples"): _positive_int(v, f"--attack-examples {k}")
            for k, v in self.attack_examples.items()
        }
        if self.n_examples is not None and self.n_examples < 1:
            raise SatpipeError(f"--n-examples must be >= 1, got {self.n_examples}")
        if self.check_examples is not None and self.check_examples < 1:
            raise SatpipeError(f"--check-examples must be >= 1, got {self.check_examples}")
        if self.autoattack_components is not None:
            self.autoattack_components = _components(self.autoattack_components)
        if self.batch_size < 1:
            raise SatpipeError(f"--batch-size must be >= 1, got {self.batch_size}")
        self.distortions = tuple(
            dict.fromkeys(check_choice(d, _DISTORTIONS, "distortion") for d in self.distortions)
        )
        self.distortion_levels = {
            self._distortion_key(k): _levels(k, v) for k, v in self.distortion_levels.items()
        }

    def _distortion_key(self, name: str) -> str:
        name = check_choice(name, _DISTORTIONS, "distortion")
        if name not in self.distortions:
            raise SatpipeError(
                f"--distortion-levels names '{name}', which --distortions does not run"
            )
        return name

    def levels(self, distortion: str) -> tuple[float, ...]:
        """The levels `distortion` is evaluated at: --distortion-levels, else the SAT code's."""
        from satpipe.train.eval.distortions import DISTORTIONS

        return self.distortion_levels.get(distortion, DISTORTIONS.get(distortion).levels)

    def _attack_key(self, name: str, flag: str) -> str:
        name = check_choice(name, _ATTACKS, "attack")
        if name not in self.attacks:
            raise SatpipeError(f"{flag} names '{name}', which --attack does not run")
        return name

    def grid(self, attack: str) -> tuple[float, ...]:
        """The eps (/255) `attack` runs at, ascending."""
        grid = set(self.attack_eps.get(attack, self._default_grid(attack)))
        if attack in ZERO_EPS_ATTACKS:
            grid.add(0.0)
        return tuple(sorted(float(e) for e in grid))

    def _default_grid(self, attack: str) -> tuple[float, ...]:
        """--eps, or the attack's own grid when it has one (an L2 attack: its radii)."""
        from satpipe.train.eval.attacks import ATTACKS

        own = ATTACKS.get(attack).default_eps
        return self.eps if own is None else own

    def to_dict(self) -> dict[str, Any]:
        """What the numbers depend on (for results.json: a reproduce step compares it)."""
        d = dataclasses.asdict(self)
        for key in ("run", "out", "device", "storage_options", "strict", "data"):
            d.pop(key)
        if not d["deterministic"]:  # recorded when set: results from before the flag still match
            d.pop("deterministic")
        return json.loads(json.dumps(d))  # tuples -> lists: equal to what results.json reads back


def _check_eps(values, flag: str) -> None:
    if not values or any(not 0 <= float(e) <= 255 for e in values):
        raise SatpipeError(f"{flag}: eps must be in [0, 255] (/255 units), got {list(values)}")


def _eps_tuple(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        values = parse_list(value, float, "--attack-eps")
    elif isinstance(value, int | float):
        values = (float(value),)
    else:
        values = parse_list(list(value), float, "--attack-eps")
    _check_eps(values, "--attack-eps")
    return tuple(float(v) for v in values)


def _levels(name: str, value: Any) -> tuple[float, ...]:
    from satpipe.train.eval.distortions import check_level

    if isinstance(value, str):
        values = parse_list(value, float, "--distortion-levels")
    elif isinstance(value, int | float):
        values = (float(value),)
    else:
        values = parse_list(list(value), float, "--distortion-levels")
    if not values:
        raise SatpipeError(f"--distortion-levels {name}: needs at least one level")
    for v in values:
        check_level(name, float(v))
    return tuple(float(v) for v in values)


def _positive_int(value: Any, flag: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or float(value) != n:
        raise SatpipeError(f"{flag}: expects a whole number of images >= 1, got {value!r}")
    return n


def _components(names) -> tuple[str, ...]:
    from satpipe.train.eval.attacks import ATTACKS

    standard = ATTACKS.get("autoattack").components
    out = tuple(dict.fromkeys(check_choice(n, _ATTACKS, "attack") for n in names))
    wrong = [n for n in out if n not in standard]
    if wrong or not out:
        raise SatpipeError(
            f"--autoattack-components: choose from {', '.join(standard)}, got {list(names)}"
        )
    return out


@dataclass
class ModelImportConfig:
    """`satpipe model import`: an existing state_dict file -> a satpipe checkpoint.

    The file is read with `weights_only=True` (no code runs; `.safetensors` files with
    safetensors); a training checkpoint holding the state_dict under a key (state_dict, model,
    ...) is found or named with --key; `module.` (DDP) and `_orig_mod.` (torch.compile) key
    prefixes are stripped. The checkpoint records the file's sha256, which saliency stores made
    from it copy into their provenance.
    """

    weights: str = option(help="state_dict file (torch.save, or .safetensors).", argument=True)
    model: str = option(
        help="Architecture the weights belong to: torchvision:NAME (e.g. torchvision:resnet50), "
        "timm:NAME, package.module:callable or a built-in name (`satpipe list model-sources`)."
    )
    num_classes: int = option(help="Classes of the weights' classifier (logits).")
    out: str = option(help="satpipe checkpoint to write, e.g. teacher.pt.", short="-o")
    in_channels: int = option(3, "Input channels of the weights' first layer.")
    input_mean: tuple[float, ...] | None = option(None, INPUT_MEAN_HELP)
    input_std: tuple[float, ...] | None = option(None, INPUT_STD_HELP)
    key: str | None = option(
        None, "Entry of a training checkpoint that holds the state_dict (default: found)."
    )
    ignore: tuple[str, ...] = option(
        (), "Drop file keys starting with these prefixes, e.g. AuxLogits. (comma-separated)."
    )
    overwrite: bool = option(False, "Replace an existing --out.")

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.num_classes < 1 or self.in_channels < 1:
            raise SatpipeError("--num-classes and --in-channels must be at least 1")
        check_model_options(self.model, self.input_mean, self.input_std)

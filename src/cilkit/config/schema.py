"""Typed, frozen experiment configs.

Every section is a frozen dataclass whose defaults are the documented defaults. ``backbone`` and
``learner`` are polymorphic: their ``name`` picks a registered config subclass that adds that
component's own options. Values are checked by :mod:`cilkit.config.loader`; impossible values are
refused in ``__post_init__`` with a :class:`FieldError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cilkit.errors import ConfigError


class FieldError(ConfigError):
    """An impossible value for one field; the loader adds the section path and the file."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name
        self.message = message


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise FieldError(field_name, message)


@dataclass(frozen=True)
class AugmentConfig:
    """Batched on-device training augmentation; ``None`` takes the dataset preset's value."""

    preset: str | None = None
    """Preset name (cifar, mnist, digits, tiny_imagenet, imagenet, none); None = the dataset's."""
    crop_padding: int | None = None
    """Zero padding before the random crop back to the image size; 0 disables the crop."""
    flip: bool | None = None
    """Random horizontal flip with probability 0.5."""

    def __post_init__(self) -> None:
        _check(self.crop_padding is None or self.crop_padding >= 0, "crop_padding", "must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and from where."""

    name: str = "digits"
    """Registered dataset (``cilkit list datasets``)."""
    root: str = "data"
    """Folder holding the dataset in its official layout."""
    download: bool = True
    """Download from the official host when missing (only where the dataset allows it)."""
    image_size: int | None = None
    """Resize images to this square size at load (image folders, Tiny-ImageNet): the size they
    are stored at on the device."""
    input_size: int | None = None
    """The square size the network sees: batches are resized to it on the device, per batch
    (32 px CIFAR to a ViT's 224 px is never stored at 224). None = the backbone's own (a timm
    model's data config), else the stored size."""
    mean: tuple[float, ...] | None = None
    """Per-channel normalisation mean in [0, 1]; None = the backbone's (a timm model's data
    config), else the dataset's."""
    std: tuple[float, ...] | None = None
    """Per-channel normalisation standard deviation; None = as ``mean``."""
    crop_pct: float | None = None
    """The centre share of each test image that evaluation keeps before resizing it to
    ``input_size`` (timm's and PILOT's ``Resize(S / crop_pct)`` + ``CenterCrop(S)``: 224/256 =
    0.875 in APER's, RanPAC's and EASE's code); None = the backbone's (a timm model's data
    config, 0.9 for most ViTs), else 1 (the whole image)."""
    in_memory: bool | None = None
    """Hold decoded images as one uint8 tensor; None = automatic (small images only)."""
    on_unreadable: Literal["skip", "error"] = "skip"
    """Image folders: skip unreadable files with a warning and a count, or stop."""
    cache: Literal["auto", "memmap", "none"] = "auto"
    """Image folders not held in memory (``in_memory`` false, or unset with ``image_size`` over
    64 or unset): ``memmap`` decodes each image once at the stored size into one file under the
    folder's ``.cilkit_cache/`` (the user's cache when read-only) and serves the split from it as
    one uint8 tensor: later epochs and runs read no image file. Disk: 3 x S x S bytes an image
    (147 KiB at 224); on a GPU the engine copies the whole split into device memory. ``none``
    keeps file paths, decoded by DataLoader workers on every pass. ``auto`` = ``memmap`` when
    ``in_memory`` is unset and the file takes at most 16 GiB and fits on the disk, else ``none``."""
    manifest: str | None = None
    """A manifest file (``cilkit data manifest ROOT -o FILE``) the dataset folder must match
    before the run starts: a missing, extra, resized or changed file is an error naming it (sizes
    are checked first, then SHA-256 hashes, cached by path, size and mtime). None = no check; the
    folder's manifest hash is recorded either way (provenance line, ``summary.json``)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(self.image_size is None or self.image_size >= 4, "image_size", "must be >= 4")
        _check(self.input_size is None or self.input_size >= 4, "input_size", "must be >= 4")
        _check(self.std is None or all(v > 0 for v in self.std), "std", "must be > 0")
        _check(self.crop_pct is None or 0 < self.crop_pct <= 1, "crop_pct", "must be in (0, 1]")
        _check(
            self.mean is None or self.std is None or len(self.mean) == len(self.std),
            "std",
            "needs one value per channel, as mean",
        )
        _check(self.manifest is None or bool(str(self.manifest).strip()), "manifest", "empty path")


@dataclass(frozen=True)
class ScenarioConfig:
    """Class-incremental split of the classes into tasks."""

    initial_increment: int | None = None
    """Classes in the first task (B50 = 50); None = ``increment``."""
    increment: int = 10
    """Classes in each later task."""
    class_order: tuple[int, ...] | None = None
    """Explicit order of the original class ids; overrides ``class_order_seed``."""
    class_order_seed: int | None = 1993
    """Seed of the class-order permutation (iCaRL / PyCIL use 1993); None = natural order."""
    long_tail: LongTailConfig | None = None
    """Make the training split long-tailed (``{kind: exp, imb_factor: 100}``); None = as is."""
    many_threshold: int = 100
    """Classes with more training images than this are 'many-shot' (many_accuracy)."""
    few_threshold: int = 20
    """Classes with fewer training images than this are 'few-shot'; the rest 'medium'."""

    def __post_init__(self) -> None:
        _check(self.increment >= 1, "increment", "must be >= 1")
        _check(
            self.initial_increment is None or self.initial_increment >= 1,
            "initial_increment",
            "must be >= 1",
        )
        _check(
            0 <= self.few_threshold <= self.many_threshold,
            "few_threshold",
            "must be between 0 and many_threshold",
        )


@dataclass(frozen=True)
class LongTailConfig:
    """Long-tailed training split: class i (original id order) keeps n_i images.

    exp: n_i = floor(n_max * imb_factor^(-i / (C - 1))); step: n_max for the first half of the
    classes, floor(n_max / imb_factor) for the rest. The test split is left untouched.
    """

    kind: Literal["exp", "step"] = "exp"
    imb_factor: float = 100.0
    """Ratio of the largest to the smallest class (IF)."""
    max_per_class: int | None = None
    """n_max; None = the dataset's largest class."""
    seed: int = 0
    """Seed of which images each class keeps."""

    def __post_init__(self) -> None:
        _check(self.imb_factor >= 1, "imb_factor", "must be >= 1")
        _check(
            self.max_per_class is None or self.max_per_class >= 1, "max_per_class", "must be >= 1"
        )


@dataclass(frozen=True)
class BackboneConfig:
    """Feature extractor; ``name`` picks a registered backbone and its options."""

    name: str = "resnet32"
    head: str | None = None
    """Classifier head (``cilkit list heads``); None = the one the learner declares (LUCIR:
    cosine, PODNet: local_similarity), else linear. A head other than the learner's is refused."""
    cosine_scale: float = 1.0
    """Cosine and local-similarity heads: the scale sigma multiplying the similarities (its
    initial value when learned)."""
    learn_cosine_scale: bool = True
    """Cosine and local-similarity heads: learn sigma (LUCIR, PODNet); false keeps it fixed,
    e.g. for LDAM, whose own scale s multiplies cosines in [-1, 1] (Cao et al.'s NormedLinear)."""
    weights: str | None = None
    """Start from trained weights: a ``.safetensors`` file or a PyTorch state dict (read with
    ``weights_only=True``) in cilkit's, torchvision's, PyCIL's or a DataParallel layout; see
    ``cilkit import-weights --help``. The classifier rows are used when the file has one per
    class of the dataset. None = random initialisation. The file is read at every start of the
    run, a resume included (where a checkpoint then replaces it), so keep it where it is."""
    weights_strict: bool = True
    """Refuse weights that would load the backbone only partly (missing or shape-mismatched
    keys); false loads what fits and reports the rest."""

    def __post_init__(self) -> None:
        _check(self.cosine_scale > 0, "cosine_scale", "must be > 0")
        _check(self.weights is None or bool(str(self.weights).strip()), "weights", "empty path")


@dataclass(frozen=True)
class LossConfig:
    """Classification loss; ``name`` picks a registered loss and its options."""

    name: str = "ce"
    drw_start_epoch: int | None = None
    """Deferred re-weighting (Cao et al. 2019): uniform class weights before this epoch, then
    effective-number weights normalised to sum to the number of classes; None = off."""
    drw_beta: float = 0.9999
    """Beta of the effective number (1 - beta^n) / (1 - beta) used by DRW."""


@dataclass(frozen=True)
class SamplerConfig:
    """How each epoch draws training samples; ``name`` picks a registered sampler."""

    name: str = "instance"


@dataclass(frozen=True)
class RebalanceConfig:
    """Two-stage rebalancing (Liu et al., "Long-Tailed Class Incremental Learning", ECCV 2022):
    after each task's training, a class-balanced stage on frozen features.

    ``lws`` is Liu et al.'s stage 2 as in their code (``src/approach/lucir_2stage.py``): one
    learnable scale per class, kept across tasks and re-trained from its previous value in every
    later stage 2, trained together with the newest classes' classifier rows (the scales at
    ``lr / lr_factor``); the scales multiply the logits at evaluation and in stage 2 only, so
    training and distillation see unscaled logits. ``lws_fold`` trains the scales alone and
    folds them into the classifier's rows (cilkit 0.1's form: later training, distillation and
    WA's weight aligning then see the scaled rows). ``crt`` re-initialises and re-trains the
    classifier (Kang et al., ICLR 2020).
    """

    method: Literal["lws", "lws_fold", "crt"] = "lws"
    """lws: Liu et al.'s learnable weight scaling; lws_fold: scales folded into the rows;
    crt: classifier re-training."""
    epochs: int = 30
    """Epochs of the balanced stage (Liu et al.: 30)."""
    lr: float = 0.1
    """Learning rate of the classifier rows (and of lws_fold's scales), cosine-annealed."""
    lr_factor: float = 10.0
    """lws: the scales' learning rate is lr / lr_factor (Liu et al.: 10)."""
    weight_decay: float = 5e-4
    momentum: float = 0.9
    sampler: SamplerConfig | None = None
    """Sampler of the balanced stage (``cilkit list samplers``); None = Liu et al.'s class-aware
    sampler, 4 consecutive samples per class visit (``{name: class_aware, samples_per_class: 4}``)."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", "must be >= 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.lr_factor > 0, "lr_factor", "must be > 0")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")


@dataclass(frozen=True)
class LearnerConfig:
    """Learning method; ``name`` picks a registered learner and its options."""

    name: str = "finetune"
    loss: LossConfig = field(default_factory=LossConfig)
    """Classification loss (``cilkit list losses``), e.g. ``{name: bsce}``."""
    rebalance: RebalanceConfig | None = None
    """Two-stage rebalancing after each task, e.g. ``{method: lws, epochs: 30}``; None = off."""


@dataclass(frozen=True)
class MemoryConfig:
    """Exemplar memory. Set one of ``memory_size`` (fixed total) or ``memory_per_class``."""

    memory_size: int | None = None
    """Fixed total budget, split evenly over the seen classes (iCaRL: 2000)."""
    memory_per_class: int | None = None
    """Fixed number of exemplars per class (the memory grows with the classes)."""
    selection: str = "herding"
    """Selection strategy (``cilkit list buffers``)."""

    def __post_init__(self) -> None:
        _check(
            self.memory_size is None or self.memory_per_class is None,
            "memory_per_class",
            "set either memory_size or memory_per_class, not both",
        )
        _check(self.memory_size is None or self.memory_size >= 1, "memory_size", "must be >= 1")
        _check(
            self.memory_per_class is None or self.memory_per_class >= 1,
            "memory_per_class",
            "must be >= 1",
        )

    @property
    def enabled(self) -> bool:
        return self.memory_size is not None or self.memory_per_class is not None


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule; ``init_*`` values apply to the first task only."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    scheduler: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[int, ...] = (80, 120)
    """Epochs at which a multistep schedule multiplies the learning rate by ``gamma``."""
    gamma: float = 0.1
    warmup_epochs: int = 0
    """Linear warm-up epochs before the schedule."""
    init_lr: float | None = None
    """First-task learning rate; None = ``lr``."""
    init_weight_decay: float | None = None
    """First-task weight decay; None = ``weight_decay``."""
    init_milestones: tuple[int, ...] | None = None
    """First-task milestones; None = ``milestones``."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.init_lr is None or self.init_lr > 0, "init_lr", "must be > 0")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        _check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        for name in ("milestones", "init_milestones"):
            ms = getattr(self, name)
            _check(ms is None or list(ms) == sorted(ms), name, "must be increasing")

    def for_task(self, task_id: int) -> tuple[float, float, tuple[int, ...]]:
        """Learning rate, weight decay and milestones of task ``task_id``."""
        if task_id == 0:
            return (
                self.init_lr if self.init_lr is not None else self.lr,
                self.init_weight_decay if self.init_weight_decay is not None else self.weight_decay,
                self.init_milestones if self.init_milestones is not None else self.milestones,
            )
        return self.lr, self.weight_decay, self.milestones


@dataclass(frozen=True)
class TrainConfig:
    """Epochs and batches."""

    epochs: int = 170
    """Epochs of every task after the first."""
    init_epochs: int | None = None
    """Epochs of the first task; None = ``epochs``."""
    batch_size: int = 128
    """Global batch size (split over processes under torchrun)."""
    eval_batch_size: int = 512
    grad_clip: float | None = None
    """Clip the gradient norm to this value."""
    num_workers: int = 4
    """Decoding workers for image folders that are not held in memory."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Epoch sampling (``cilkit list samplers``): instance, class_balanced, sqrt, ..."""
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """How every learning rate of the run (main training and every stage's) follows the batch
    size: ``linear`` multiplies it by ``batch_size / lr_base_batch_size`` (Goyal et al., 2017;
    pair it with ``optim.warmup_epochs``), ``sqrt`` by the square root of that ratio (Krizhevsky,
    2014; Hoffer et al., 2017), ``none`` leaves the config's values."""
    lr_base_batch_size: int = 128
    """The batch size the config's learning rates were chosen for (the published recipes')."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, "epochs", "must be >= 0")
        _check(self.lr_base_batch_size >= 1, "lr_base_batch_size", "must be >= 1")
        _check(self.init_epochs is None or self.init_epochs >= 0, "init_epochs", "must be >= 0")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be > 0")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")

    def epochs_for_task(self, task_id: int) -> int:
        if task_id == 0 and self.init_epochs is not None:
            return self.init_epochs
        return self.epochs

    def lr_multiplier(self) -> float:
        """The factor ``lr_scaling`` applies to every learning rate at this batch size."""
        ratio = self.batch_size / self.lr_base_batch_size
        return {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]


@dataclass(frozen=True)
class EngineConfig:
    """Where and how the one training loop runs."""

    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:N."""
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """Mixed precision of every forward pass (training, evaluation, herding and class-mean
    features): auto = bf16 autocast on CUDA, off on CPU; bf16 on a CPU with AMX or AVX-512 BF16
    units (recent Xeons) trains about 1.9x faster (``benchmarks/README.md``, "bf16 on the CPU")."""
    channels_last: bool = True
    deterministic: bool = True
    """Deterministic algorithms (bit-identical CPU runs for a seed)."""
    compile: bool = False
    """torch.compile every feature extractor, those a method adds later included (pays on long
    GPU runs; the first batches of a run, and of its first evaluation, wait for compilation)."""
    progress: Literal["tqdm", "rich", "none"] = "tqdm"
    tensorboard: bool = True
    """Also log to TensorBoard when it is installed."""
    num_threads: int | None = None
    """CPU threads for torch; None = torch's default."""
    checkpoint_every_epochs: int | None = None
    """Also checkpoint inside a task every N epochs (long first tasks); None = after tasks only."""
    feature_cache: bool = True
    """Evaluation of methods that classify a frozen network's features (SimpleCIL, RanPAC, ...):
    compute each test image's features once while the network's values stay the same, instead
    of once per evaluation (identical results; false recomputes them every time)."""

    def __post_init__(self) -> None:
        ok = self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        _check(ok, "device", f"'{self.device}' is not auto, cpu, cuda or cuda:N")
        every = self.checkpoint_every_epochs
        _check(every is None or every >= 1, "checkpoint_every_epochs", "must be >= 1")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: one run of a learner over a class-incremental scenario."""

    name: str = "experiment"
    seed: int = 1993
    data: DataConfig = field(default_factory=DataConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


POLYMORPHIC_SECTIONS = {
    BackboneConfig: "backbone",
    LearnerConfig: "learner",
    LossConfig: "loss",
    SamplerConfig: "sampler",
}
"""Sections whose ``name`` picks a config subclass from the registry of that kind."""

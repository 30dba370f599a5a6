"""Any timm model as a cilkit backbone (``backbone.name: timm``), with its own preprocessing.

``backbone.model`` names the timm model (``vit_base_patch16_224.augreg_in21k``,
``resnet50.a1_in1k``, ``vit_tiny_patch16_224``, ...) and ``backbone.kwargs`` goes to
``timm.create_model`` (``img_size``, ``patch_size``, ``drop_path_rate``, ...). The classifier is
removed (``num_classes=0``): the backbone returns timm's pooled pre-logits features,
``num_features`` wide, and the class head comes from cilkit's head registry as for every other
backbone.

Weights: ``backbone.pretrained_path`` loads a local file, ``backbone.pretrained: true`` timm's
own download (only then does anything go to the network). A ``.safetensors`` file is read with
safetensors and a PyTorch file with ``torch.load(weights_only=True)`` (no pickled code runs),
then handed to timm as ``pretrained_cfg_overlay=dict(state_dict=...)``, so timm's own checkpoint
filter of the architecture applies (position-embedding resampling, layouts of older releases)
and a classifier of another class count is dropped. The ``.npz`` files of the original ViT
papers go through timm's ``custom_load`` reader (``numpy.load`` without pickles).

Every load records what was loaded (:attr:`TimmBackbone.provenance`): the model name, the weight
tag (timm's, or ``file`` or ``random``), the weights file's SHA-256 and a SHA-256 of the loaded
tensors themselves; runs print it and write it to ``metrics.jsonl``'s summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cilkit.backbones.base import Backbone, FeatureInfo, register_backbone
from cilkit.backbones.weights.files import WeightsError, read_state_dict
from cilkit.config.schema import BackboneConfig, FieldError
from cilkit.errors import ConfigError, did_you_mean

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


@dataclass(frozen=True)
class TimmConfig(BackboneConfig):
    name: str = "timm"
    model: str = "vit_tiny_patch16_224"
    """timm model name, optionally with its weight tag (``vit_base_patch16_224.augreg_in21k``):
    name the tag explicitly, since it says what the model was pre-trained on."""
    pretrained: bool = False
    """Download timm's weights for ``model`` (needs the internet; nothing is downloaded
    otherwise)."""
    pretrained_path: str | None = None
    """A local weights file for ``model``: ``.safetensors``, a weights-only PyTorch state dict
    (``.pth``/``.pt``/``.bin``), or a ViT ``.npz``. Read at every start of the run."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``timm.create_model`` (``img_size``, ``patch_size``,
    ``drop_path_rate``, ...)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pretrained and self.pretrained_path:
            raise FieldError("pretrained", "set pretrained or pretrained_path, not both")
        if not self.model.strip():
            raise FieldError("model", "empty model name")
        for key in ("num_classes", "in_chans", "pretrained", "pretrained_cfg_overlay"):
            if key in self.kwargs:
                raise FieldError(f"kwargs.{key}", "is set by cilkit; remove it")


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "backbone 'timm' needs the timm package: pip install -e '.[timm]' (or pip install timm)"
        ) from None
    return timm


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tensors(module: torch.nn.Module) -> str:
    """SHA-256 over the module's state dict (names, dtypes, shapes and bytes, in name order): the
    same for two loads of the same weights whatever file format they came from."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors through cilkit's one safe reader (:func:`read_state_dict`: safetensors,
    or ``torch.load(weights_only=True)``, checkpoint wrappers unwrapped), DataParallel's
    ``module.`` prefix dropped; its errors as the config field's one line."""
    try:
        state = read_state_dict(path)
    except WeightsError as err:
        raise ConfigError(f"backbone.pretrained_path: {err}") from None
    return {k.removeprefix("module."): v for k, v in state.items()}


class TimmBackbone(Backbone):
    """A timm model without its classifier: images to pooled pre-logits features.

    Attributes:
        model: the timm model (``num_classes=0``).
        out_dim: ``model.num_features``.
        data_config: the model's preprocessing from ``timm.data.resolve_model_data_config``:
            ``input_size`` (an int; ``kwargs.img_size`` when given), ``interpolation``,
            ``mean``, ``std``, ``crop_pct``.
        provenance: what was loaded: ``model``, ``tag``, ``weights`` (the file, when one was
            read), ``weights_sha256`` and ``tensors_sha256``.
    """

    def __init__(self, cfg: TimmConfig, in_channels: int) -> None:
        super().__init__()
        timm = _timm()
        del self.pool  # timm pools itself
        architecture = cfg.model.split(".", 1)[0]
        if not timm.is_model(architecture):
            known = timm.list_models()
            raise ConfigError(
                f"backbone.model: timm has no model '{cfg.model}'{did_you_mean(architecture, known)}"
            )
        overlay, path = None, None
        if cfg.pretrained_path:
            path = Path(cfg.pretrained_path).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"backbone.pretrained_path: no file {path}; set it to a {'/'.join(_WEIGHT_SUFFIXES)} "
                    "weights file of the model"
                )
            if path.suffix == ".npz":
                overlay = {"file": str(path), "custom_load": True}
            else:
                overlay = {"state_dict": _read_weights(path)}
        kwargs = dict(cfg.kwargs)
        try:
            with _timm_load_reports() as reports:
                self.model = timm.create_model(
                    cfg.model,
                    pretrained=cfg.pretrained or overlay is not None,
                    pretrained_cfg_overlay=overlay,
                    num_classes=0,
                    in_chans=in_channels,
                    **kwargs,
                )
        except (RuntimeError, ValueError, KeyError, TypeError, OSError) as err:
            raise ConfigError(_load_error(cfg, path, err)) from None
        if reports and cfg.weights_strict:
            where = "backbone.pretrained_path" if path else "backbone.pretrained"
            raise ConfigError(
                f"{where}: the weights do not fit timm model '{cfg.model}' with kwargs "
                f"{cfg.kwargs or {}}: {'; '.join(reports)[:400]}; use the weights' own model and "
                "kwargs, or backbone.weights_strict=false to load what fits"
            )
        self.out_dim = int(self.model.num_features)
        self.feature_info = [
            FeatureInfo(f"model.{f['module']}", int(f["num_chs"]), int(f["reduction"]))
            for f in getattr(self.model, "feature_info", [])
        ]
        data = timm.data.resolve_model_data_config(self.model)
        size = kwargs.get("img_size", data["input_size"][-1])
        self.data_config = {
            "input_size": int(size if isinstance(size, int) else max(size)),
            # the two the device-side resize has; timm's others (nearest, random) read as bilinear
            "interpolation": "bicubic" if data.get("interpolation") == "bicubic" else "bilinear",
            "mean": tuple(float(m) for m in data["mean"])[:in_channels],
            "std": tuple(float(s) for s in data["std"])[:in_channels],
            "crop_pct": float(data.get("crop_pct", 0.875)),
        }
        if in_channels != len(data["mean"]):  # grey images: one channel's worth of statistics
            mean, std = data["mean"], data["std"]
            self.data_config["mean"] = (sum(mean) / len(mean),) * in_channels
            self.data_config["std"] = (sum(std) / len(std),) * in_channels
        tag = getattr(self.model, "pretrained_cfg", {}).get("tag") or ""
        self.provenance = {
            "model": cfg.model,
            "tag": tag if cfg.pretrained else ("file" if path else "random"),
            "weights": str(path) if path else None,
            "weights_sha256": sha256_file(path) if path else None,
            "tensors_sha256": sha256_tensors(self.model),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_intermediates(
        self, x: torch.Tensor, last_relu: bool | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The pooled features and every block's (or stage's) output, from timm's own
        ``forward_intermediates`` (NCHW maps for ViTs as for CNNs); ``last_relu`` is ignored."""
        final, maps = self.model.forward_intermediates(x)
        return self.model.forward_head(final, pre_logits=True), list(maps)


@contextlib.contextmanager
def _timm_load_reports():
    """The keys timm reports as missing or unexpected while it loads weights.

    timm loads a checkpoint non-strictly whenever the classifier is replaced (always here:
    ``num_classes=0``) and only logs the keys that did not fit, so a file of a deeper or
    differently named model would load partly without an error. Its two log lines ("Missing
    keys (...)", "Unexpected keys (...)", timm 0.9 to 1.0) are collected here and refused
    unless ``backbone.weights_strict`` is false."""
    reports: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if text.startswith(("Missing keys", "Unexpected keys")):
                reports.append(text.split(" discovered")[0].split(" found while")[0])

    log = logging.getLogger("timm.models._builder")
    handler, level = _Collect(), log.level
    log.addHandler(handler)
    log.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield reports
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _load_error(cfg: TimmConfig, path: Path | None, err: Exception) -> str:
    """One line for a failed ``create_model``: a download, an unfit file or a bad keyword."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    first = ("; ".join(lines[:2]) if lines else type(err).__name__)[:300]
    if path is not None:
        return (
            f"backbone.pretrained_path: {path} does not fit timm model '{cfg.model}' "
            f"with kwargs {cfg.kwargs or {}} ({first}); use the file's own model and kwargs"
        )
    if cfg.pretrained:
        return (
            f"backbone.pretrained: cannot get timm's weights for '{cfg.model}' ({first}); when "
            "offline, download them elsewhere and set backbone.pretrained_path"
        )
    return f"backbone: timm.create_model('{cfg.model}', {cfg.kwargs or {}}) failed ({first})"


@register_backbone("timm", config=TimmConfig)
def timm_backbone(cfg: TimmConfig, in_channels: int) -> TimmBackbone:
    """Any timm model by name (backbone.model), its classifier removed; weights from a local file
    (backbone.pretrained_path) or timm's download (backbone.pretrained)."""
    return TimmBackbone(cfg, in_channels)

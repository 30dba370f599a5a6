"""Predict with a trained run: a run directory and one of its task checkpoints, images in,
the top-k classes with names and probabilities of every classifier out.

    predictor = Predictor.from_run("runs/quickstart", checkpoint="task-004")
    answers = predictor.predict_files(["cat.png"], k=5)

The learner is rebuilt from the run's ``config.yaml`` exactly as a resume does (the dataset is
read for its class names, its normalisation and its image shape), and the checkpoint's weights
replace all of it. An uploaded image is converted and resized the way the run's dataset was:
file-backed datasets (ImageNet-style folders) with the same decoder as training (shorter side to
``S * 256/224``, centre crop), in-memory ones resized to the stored images' height and width, in
greyscale for one-channel datasets. A file that is not an image, too large, or whose channels
cannot become the dataset's is a one-line :class:`ImageInputError`, never a stack trace.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cilkit.errors import CheckpointError, CilkitError

MAX_FILE_BYTES = 20 * 1024 * 1024
"""Largest image file accepted (bytes)."""
MAX_PIXELS = 40_000_000
"""Largest image accepted (width x height), checked before decoding."""


class ImageInputError(CilkitError):
    """An input that cannot be used as an image for this run."""


@dataclass(frozen=True)
class Answer:
    """One image's prediction: per classifier, the top-k ``(class name, probability)``."""

    name: str
    top: dict[str, list[tuple[str, float]]]


def read_image(path: str | Path, shape: tuple[int, int, int], lazy: bool) -> torch.Tensor:
    """``path`` as a ``uint8`` tensor of ``shape`` (C, H, W), converted the dataset's way.

    Args:
        path: the image file.
        shape: the run's image shape.
        lazy: the dataset decodes files on access (the training decoder is used then).

    Raises:
        ImageInputError: not an image, too large, or channels that cannot become ``C``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageInputError(f"{name}: cannot read the file ({err.strerror})") from None
    if size > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // (1024 * 1024)
        raise ImageInputError(f"{name}: {size / 1e6:.1f} MB is larger than the {limit} MiB limit")
    channels, height, width = shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageInputError(
                        f"{name}: {w} x {h} pixels is larger than the {MAX_PIXELS:,} limit"
                    )
                bands = len(im.getbands())
                if bands not in (1, 2, 3, 4):
                    raise ImageInputError(
                        f"{name}: {bands} channels ({im.mode}) cannot be read as "
                        + ("greyscale" if channels == 1 else "RGB")
                    )
                im.load()
                if lazy:
                    from cilkit.data.lazy import decode_image

                    arr = decode_image(str(path), height, "eval")
                else:
                    img = im.convert("L" if channels == 1 else "RGB")
                    if img.size != (width, height):
                        img = img.resize((width, height), Image.Resampling.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
                    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(f"{name}: not an image (no image format recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(f"{name}: too many pixels (a decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageInputError(f"{name}: cannot decode the image ({reason})") from None
    if arr.shape[0] != channels:  # the file decoder gives RGB; a grey dataset takes its mean
        arr = arr.mean(axis=0, keepdims=True).round().astype(np.uint8)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))


def task_checkpoints(run_dir: str | Path) -> list[str]:
    """The names of the run's end-of-task checkpoints, newest first (mid-task ones left out)."""
    from cilkit.engine.checkpoint import list_checkpoints

    return [
        p.stem for p in list_checkpoints(Path(run_dir) / "checkpoints") if "-" not in p.stem[5:]
    ]


class Predictor:
    """A trained learner ready to predict; build it with :meth:`from_run`.

    Args:
        parts: the rebuilt run (:func:`cilkit.engine.build.build_run`).
        tasks: tasks learnt at the checkpoint.
        checkpoint: the checkpoint's name.
    """

    def __init__(self, parts: Any, tasks: int, checkpoint: str) -> None:
        self.parts = parts
        self.tasks = tasks
        self.num_seen = sum(parts.train_scenario.increments[:tasks])
        """Classes learnt at the checkpoint."""
        self.checkpoint = checkpoint
        self.class_names = parts.train_scenario.class_names[: self.num_seen]
        self.shape = parts.dataset.train.image_shape
        self.lazy = parts.dataset.train.images is None

    @classmethod
    def from_run(
        cls, run_dir: str | Path, checkpoint: str | None = None, device: str = "cpu"
    ) -> Predictor:
        """Rebuild the run in ``run_dir`` and load ``checkpoint`` (a name from
        :func:`task_checkpoints`, e.g. ``task-004``; the newest when None)."""
        import dataclasses

        from cilkit.config import load_config
        from cilkit.engine.build import build_run, to_device
        from cilkit.engine.checkpoint import load_checkpoint

        run_dir = Path(run_dir)
        config = run_dir / "config.yaml"
        if not config.exists():
            raise CheckpointError(f"{run_dir}: not a run directory (no config.yaml)")
        cfg = load_config(config)
        engine = dataclasses.replace(cfg.engine, device=device, compile=False)
        cfg = dataclasses.replace(cfg, engine=engine)
        if checkpoint is None:
            names = task_checkpoints(run_dir)
            if not names:
                raise CheckpointError(f"{run_dir}: the run has no task checkpoint")
            checkpoint = names[0]
        if checkpoint not in task_checkpoints(run_dir):
            raise CheckpointError(
                f"{run_dir}: no task checkpoint {checkpoint!r}; it has "
                + (", ".join(task_checkpoints(run_dir)) or "none")
            )
        state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.json")
        parts = build_run(cfg, str(config), load_weights=False)
        learner = parts.learner
        learner.load_state_dict(state["learner"])
        to_device(learner, parts.device, cfg.engine.channels_last)
        learner.eval()
        return cls(parts, int(state["next_task"]), checkpoint)

    @torch.inference_mode()
    def predict_tensor(self, images: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
        """Top-``k`` per classifier for ``uint8`` images ``(N, C, H, W)``: for each image
        ``{classifier: [(class name, probability), ...]}``."""
        parts = self.parts
        x = parts.test.transform.eval(images.to(parts.device))
        scores = parts.learner.predict(x)
        k = min(k, self.num_seen)
        out: list[dict[str, Any]] = [{} for _ in range(len(images))]
        for classifier, logits in scores.items():
            probs = torch.softmax(logits[:, : self.num_seen].float(), dim=1)
            values, index = probs.topk(k, dim=1)
            for i in range(len(images)):
                out[i][classifier] = [
                    (self.class_names[j], float(p))
                    for j, p in zip(index[i].tolist(), values[i].tolist(), strict=True)
                ]
        return out

    def predict_files(self, paths: list[str | Path], k: int = 5) -> list[Answer | ImageInputError]:
        """Each file's :class:`Answer`, or the :class:`ImageInputError` that says why not."""
        read: list[torch.Tensor] = []
        slots: list[int] = []
        results: list[Answer | ImageInputError] = []
        for path in paths:
            try:
                read.append(read_image(path, self.shape, self.lazy))
                slots.append(len(results))
                results.append(Answer(Path(path).name, {}))
            except ImageInputError as err:
                results.append(err)
        if read:
            for slot, top in zip(slots, self.predict_tensor(torch.stack(read), k), strict=True):
                results[slot] = Answer(results[slot].name, top)  # type: ignore[union-attr]
        return results

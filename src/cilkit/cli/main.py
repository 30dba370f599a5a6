"""The ``cilkit`` command: run, tune, import-weights, ui, list, show-config, compare, report, data;
the arguments are declared in :mod:`cilkit.cli.parser`.

Importing this module (and ``cilkit --help`` / ``--version``) does not import torch; each command
imports what it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import errno
import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, TextIO

from cilkit.cli.parser import KINDS, build_parser
from cilkit.config.loader import quickstart_config_text
from cilkit.errors import CheckpointError, CilkitError, RunInterrupted, did_you_mean


def _cmd_run(args: argparse.Namespace) -> int:
    from cilkit.config import build_config
    from cilkit.config.loader import parse_yaml, read_yaml
    from cilkit.config.source import ConfigSource
    from cilkit.engine.distributed import Distributed
    from cilkit.engine.trainer import Trainer

    if args.resume:
        if args.config or args.out:
            raise CilkitError("--resume continues a run with its own config.yaml; drop -c/--out")
        out = Path(args.resume)
        file = str(out / "config.yaml")
        if not (out / "config.yaml").exists():
            raise CheckpointError(f"--resume {out}: not a run directory (no config.yaml)")
        data = read_yaml(file)
    elif args.config:
        data, file = read_yaml(args.config), args.config
    else:
        file = "quickstart.yaml (embedded)"
        data = parse_yaml(quickstart_config_text(), file)
    source = ConfigSource(file, tuple(args.overrides))
    cfg = build_config(data, source=source)
    if args.quiet:
        cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, progress="none"))
    if not args.resume:
        if args.out:
            out = Path(args.out)
        else:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{stamp}-{cfg.name}"
        if Distributed.from_env().rank == 0:  # under torchrun only rank 0 owns the directory
            _claim_run_dir(out, args.overwrite)
    trainer = Trainer(cfg, out, source=source)
    summary = trainer.fit(resume=bool(args.resume), stop_after_task=args.stop_after_task)
    if summary is not None and trainer.log is not None:
        print(f"\nrun directory: {out}  (config.yaml, metrics.jsonl, summary.json, plots/)")
    return 0


def _claim_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse a directory that holds another run unless ``overwrite``; then clear that run."""
    if not (out / "config.yaml").exists():
        return
    if not overwrite:
        raise CilkitError(
            f"--out {out} already holds a run; continue it with --resume {out}, "
            "choose another --out, or pass --overwrite"
        )
    for name in ("checkpoints", "plots"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "epochs.jsonl", "status.json"):
        (out / name).unlink(missing_ok=True)


def _cmd_tune(args: argparse.Namespace) -> int:
    from cilkit.components.plugin_tuning import TuneOptions, tune, tune_weights
    from cilkit.config.loader import parse_override

    if (args.source is None) == (args.weights is None):
        raise CilkitError("tune needs either --from RUN_DIR or --weights PATH -c CONFIG")
    if args.weights is not None and not args.config:
        raise CilkitError("--weights needs -c CONFIG (the data, scenario and backbone)")
    if args.config and args.weights is None:
        raise CilkitError("-c is for --weights; --from uses the run's own config.yaml")
    loss: dict = {"name": args.loss}
    overrides = []
    for text in args.loss_options:
        key, value = parse_override(text)
        if args.weights is not None and not key.startswith("loss."):
            overrides.append(text)
            continue
        if not key.startswith("loss.") or key.count(".") != 1:
            raise CilkitError(f"'{text}': loss options are given as loss.KEY=VALUE")
        loss[key.split(".", 1)[1]] = value
    origin = args.source or str(Path(args.weights).with_suffix(""))
    out = Path(args.out) if args.out else Path(f"{origin.rstrip('/')}-tuned-{args.loss}")
    _claim_run_dir(out, args.overwrite)
    opts = TuneOptions(
        loss=loss,
        freeze=args.freeze,
        epochs=args.epochs,
        lr=args.lr,
        ensemble=args.ensemble,
        t_new=args.t_new,
        t_old=args.t_old,
    )
    if args.weights is not None:
        from cilkit.config import build_config
        from cilkit.config.loader import read_yaml
        from cilkit.config.source import ConfigSource

        source = ConfigSource(args.config, tuple(overrides))
        cfg = build_config(read_yaml(args.config), source=source)
        tune_weights(cfg, args.weights, out, opts, source=source)
    else:
        tune(args.source, out, opts)
    print(f"\ntuned run directory: {out}")
    return 0


def _cmd_import_weights(args: argparse.Namespace) -> int:
    from cilkit.backbones import create_backbone
    from cilkit.backbones.weights import load_backbone_weights, save_weights
    from cilkit.config import build_config
    from cilkit.config.loader import parse_override

    options: dict = {"name": args.backbone}
    for text in args.options:
        key, value = parse_override(text)
        if not key.startswith("backbone.") or key.count(".") != 1:
            raise CilkitError(f"'{text}': backbone options are given as backbone.KEY=VALUE")
        options[key.split(".", 1)[1]] = value
    cfg = build_config({"backbone": options}).backbone
    if not args.out.endswith(".safetensors"):
        raise CilkitError(f"-o {args.out}: the output is a .safetensors file")
    backbone = create_backbone(cfg, args.in_channels)
    mapped = load_backbone_weights(
        backbone, args.src, strict=not args.allow_partial, what=f"backbone '{args.backbone}'"
    )
    record = save_weights(mapped, args.out, args.backbone)
    print(mapped.summary())
    head = mapped.head_weight
    print(f"classifier: {list(head.shape)}" if head is not None else "classifier: none in the file")
    print(f"wrote {args.out} and {record}")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    try:
        from cilkit.ui.page import serve
    except ImportError as err:
        raise CilkitError(
            f"cilkit ui needs the ui extra ({err.name} is missing): pip install 'cilkit[ui]'"
        ) from None
    start = None
    if args.config:
        from cilkit.config import load_config

        start = load_config(args.config)
    print(f"cilkit ui: http://{args.host}:{args.port}  (runs folder: {args.runs}; Ctrl-C stops)")
    serve(args.runs, host=args.host, port=args.port, start=start)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from cilkit.registry import get_registry

    reg = get_registry(KINDS[args.kind])
    entries = reg.entries()
    width = max((len(e.name) for e in entries), default=0)
    for e in entries:
        print(f"{e.name:<{width}}  {e.description}")
    return 0


def _cmd_show_config(args: argparse.Namespace) -> int:
    from cilkit.config import schema
    from cilkit.config.loader import describe_config
    from cilkit.registry import get_registry

    regs = {plural: get_registry(kind) for plural, kind in KINDS.items()}
    sections = {
        "data": schema.DataConfig,
        "scenario": schema.ScenarioConfig,
        "memory": schema.MemoryConfig,
        "optim": schema.OptimConfig,
        "train": schema.TrainConfig,
        "engine": schema.EngineConfig,
    }
    kinds = {  # registry -> the config section its options go in
        "learners": ("learner", schema.LearnerConfig),
        "backbones": ("backbone", schema.BackboneConfig),
        "losses": ("learner.loss", schema.LossConfig),
        "samplers": ("train.sampler", schema.SamplerConfig),
    }
    entry = None
    for kind, (section_name, base) in kinds.items():
        if args.name in regs[kind]:
            entry, section = regs[kind].get(args.name), section_name
            cls = entry.config_cls or base
            break
    else:
        if args.name not in sections:
            known = [n for kind in kinds for n in regs[kind].names()] + list(sections)
            raise CilkitError(
                f"unknown name '{args.name}': not a learner, backbone, loss, sampler or config "
                f"section{did_you_mean(args.name, known)}; see cilkit list learners|backbones|"
                f"losses|samplers, or one of: {', '.join(sections)}"
            )
        section, cls = args.name, sections[args.name]
    if entry is not None:
        print(f"{section}: {entry.name} - {entry.description}")
        doc = (entry.obj.__doc__ or "").strip().splitlines()[1:]
        if doc:
            print(textwrap.indent(textwrap.dedent("\n".join(doc)).strip(), "  "))
        print()
    print(f"options ({section}.KEY=VALUE):")
    for key, tp, default, doc in describe_config(cls):
        print(f"  {key}: {tp} = {default!r}")
        if doc:
            print(textwrap.indent(textwrap.fill(doc, 90), "      "))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from cilkit.results.compare import state_lines, summary_table
    from cilkit.results.runs import load_runs

    runs = load_runs(args.run_dirs)
    print(summary_table(runs))
    notes = state_lines(runs)
    if notes:
        print()
        print("\n".join(notes))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from cilkit.results.report_html import write_html_report
    from cilkit.results.runs import load_runs

    out = Path(args.out)
    if out.is_dir():
        raise CilkitError(f"-o {out}: is a directory; give a file name such as report.html")
    if out.exists() and not args.overwrite:
        raise CilkitError(f"-o {out} already exists; pass --overwrite to replace it")
    runs = load_runs(args.run_dirs)
    write_html_report(runs, out, title=args.title)
    print(f"wrote {out} ({len(runs)} run(s))")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from cilkit.data.manifest import make_manifest, write_manifest

    root = Path(args.root).expanduser().resolve()
    out = Path(args.out or f"{root.name}.manifest.jsonl").expanduser().resolve()
    if out.is_dir():
        raise CilkitError(f"-o {out}: is a directory; give a file name such as manifest.jsonl")
    if out.exists() and not args.overwrite:
        raise CilkitError(f"-o {out} already exists; pass --overwrite to replace it")
    print(f"hashing the files under {root} ...", file=sys.stderr)
    manifest = make_manifest(root, rehash=args.rehash, exclude=[out])
    write_manifest(manifest, out)
    size = f"{manifest.total_bytes / 1e9:.2f} GB"
    print(f"wrote {out}: {len(manifest.entries):,} files, {size}, sha256 {manifest.sha256}")
    return 0


class _PipeSafe:
    """A text stream that stops writing, silently, once its reader has gone (``| head``).

    A run whose output pipe breaks keeps training with its output dropped (the run directory's
    ``log.txt`` still gets every line), so a closed pipe never turns into a silent success with
    no ``summary.json``. The stream's file descriptor is pointed at /dev/null so the interpreter's
    final flush cannot fail either.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def _dropped(self) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file: just drop output
            pass

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except OSError as err:
                if not isinstance(err, BrokenPipeError) and err.errno != errno.EPIPE:
                    raise
                self._dropped()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError as err:
                if not isinstance(err, BrokenPipeError) and err.errno != errno.EPIPE:
                    raise
                self._dropped()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (argparse alone stops at the first option).
    args, extra = parser.parse_known_args(argv)
    free = ("run", "tune", "import-weights")
    unknown = [e for e in extra if e.startswith("-") or args.command not in free]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        args.overrides = list(args.overrides) + extra
    elif args.command == "tune":
        args.loss_options = list(args.loss_options) + extra
    elif args.command == "import-weights":
        args.options = list(args.options) + extra
    commands = {
        "run": _cmd_run,
        "tune": _cmd_tune,
        "import-weights": _cmd_import_weights,
        "list": _cmd_list,
        "ui": _cmd_ui,
        "show-config": _cmd_show_config,
        "compare": _cmd_compare,
        "report": _cmd_report,
        "data": _cmd_data,
    }
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    try:
        return commands[args.command](args)
    except RunInterrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    except CilkitError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout, sys.stderr = saved


if __name__ == "__main__":
    sys.exit(main())

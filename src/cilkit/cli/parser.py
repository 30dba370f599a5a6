"""The ``cilkit`` command line's arguments (:func:`build_parser`); the commands themselves are in
:mod:`cilkit.cli.main`. Imports nothing heavy, so ``cilkit --help`` stays fast."""

from __future__ import annotations

import argparse
import textwrap

from cilkit import __version__

KINDS = {
    "learners": "learner",
    "backbones": "backbone",
    "heads": "head",
    "datasets": "dataset",
    "buffers": "buffer",
    "losses": "loss",
    "samplers": "sampler",
}
"""``cilkit list KIND`` -> the registry kind (:data:`cilkit.registry.REGISTRIES`)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``cilkit`` argument parser: every subcommand with its options and help."""
    p = argparse.ArgumentParser(
        prog="cilkit",
        description="Class-incremental learning on one fast engine.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              cilkit run                                   # the embedded digits quickstart
              cilkit run -c configs/experiments/icarl_cifar100_b0_inc10.yaml data.root=/data
              cilkit run -c X.yaml train.epochs=2 learner.kd_temperature=3 --out runs/try
              cilkit list learners
              cilkit show-config icarl
              cilkit compare runs/                         # every run under runs/, as a table
              cilkit report runs/a runs/b -o report.html   # the same, as one HTML file
              cilkit ui --runs runs/                       # the web page (pip install cilkit[ui])
            """
        ),
    )
    p.add_argument("--version", action="version", version=f"cilkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="train and evaluate a learner over a class-incremental scenario",
        description="Train and evaluate. Without -c, runs the embedded digits quickstart.",
    )
    run.add_argument("-c", "--config", help="experiment YAML (default: the embedded quickstart)")
    run.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.epochs=2"
    )
    run.add_argument("--out", help="run directory (default: runs/<date-time>-<name>/)")
    run.add_argument(
        "--overwrite", action="store_true", help="replace a run directory that holds another run"
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped or killed run from its last complete checkpoint",
    )
    run.add_argument(
        "--stop-after-task",
        type=int,
        metavar="N",
        help="end cleanly after task id N (0-based); continue later with --resume",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--debug", action="store_true", help="show tracebacks")

    tune = sub.add_parser(
        "tune",
        help="re-train a finished run's classifier with another loss (GML plug-in tuning)",
        description="Load a finished run, freeze the feature extractor, re-train the classifier "
        "on the same training data with a chosen loss (GML by default), optionally ensemble the "
        "old and new classifiers, and save the result as a new run with before/after metrics.",
    )
    tune.add_argument("--from", dest="source", metavar="RUN_DIR", help="a finished cilkit run")
    tune.add_argument(
        "--weights",
        metavar="PATH",
        help="instead of --from: a model trained elsewhere (.safetensors, or a .pt/.pth state "
        "dict read with weights_only=True; see import-weights), with -c CONFIG giving its data "
        "and backbone in one task of all classes, and its classifier with one row per class",
    )
    tune.add_argument("-c", "--config", help="with --weights: experiment YAML (KEY=VALUE too)")
    tune.add_argument("--out", help="new run directory (default: RUN_DIR-tuned-LOSS)")
    tune.add_argument("--loss", default="gml", help="registered loss (cilkit list losses)")
    tune.add_argument(
        "loss_options", nargs="*", metavar="loss.KEY=VALUE", help="loss options, e.g. loss.p=2"
    )
    tune.add_argument(
        "--freeze",
        choices=["backbone", "none"],
        default="backbone",
        help="backbone: train only the classifier (default); none: fine-tune everything",
    )
    tune.add_argument("--epochs", type=int, default=10)
    tune.add_argument("--lr", type=float, default=0.01)
    tune.add_argument("--ensemble", action="store_true", help="ensemble old and new classifiers")
    tune.add_argument("--t-new", type=float, default=1.0, help="ensemble temperature (new)")
    tune.add_argument("--t-old", type=float, default=1.0, help="ensemble temperature (old)")
    tune.add_argument("--overwrite", action="store_true")

    imp = sub.add_parser(
        "import-weights",
        help="convert a state dict from another toolbox into cilkit's names (.safetensors)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent(
            """\
            Convert trained weights once into cilkit's key names, checked against a cilkit
            backbone, and write them as OUT.safetensors plus OUT.json (what was mapped). Use the
            result with backbone.weights=OUT.safetensors in cilkit run, or cilkit tune --weights.

            SRC is a .safetensors file or a PyTorch .pt/.pth state dict, read with
            torch.load(weights_only=True) only: a pickle that would run code or build objects
            is refused and nothing in it runs. Recognised layouts: DataParallel 'module.',
            PyCIL ('convnet.' + 'fc.'), torchvision ResNet names (conv1, layer1.0.conv1,
            downsample), PyCIL's CIFAR ResNets (conv_1_3x3, stage_1.0.conv_a), classifier
            names fc/linear/classifier/head, and cilkit's own. A file that would load the
            backbone only partly is refused with the missing and mismatched keys listed,
            unless --allow-partial.
            """
        ),
        epilog="example: cilkit import-weights ce_model.pth --backbone resnet32 -o ce.safetensors",
    )
    imp.add_argument("src", metavar="SRC")
    imp.add_argument("--backbone", required=True, help="cilkit backbone (cilkit list backbones)")
    imp.add_argument("-o", "--out", required=True, metavar="OUT.safetensors")
    imp.add_argument("--in-channels", type=int, default=3, help="image channels (default 3)")
    imp.add_argument(
        "options", nargs="*", metavar="backbone.KEY=VALUE", help="backbone options (stem=cifar)"
    )
    imp.add_argument(
        "--allow-partial", action="store_true", help="write what fits even if keys are missing"
    )

    ui = sub.add_parser(
        "ui",
        help="the web page: train, watch, compare, try and tune runs (pip install cilkit[ui])",
        description="Serve the web UI on HOST:PORT (127.0.0.1 by default: this machine only). "
        "It reads and creates runs in the --runs folder and serves no other file.",
    )
    ui.add_argument("--runs", default="runs", help="the runs folder (default: runs)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ui.add_argument("-c", "--config", help="YAML the Train form starts from (default: quickstart)")

    ls = sub.add_parser("list", help="list registered components with a one-line description")
    ls.add_argument("kind", choices=list(KINDS))

    show = sub.add_parser(
        "show-config",
        help="print a learner's (or backbone's) typed options with defaults and docs",
        description="Print the options of a learner or backbone, or of a config section "
        "(data, scenario, memory, optim, train, engine).",
    )
    show.add_argument("name")

    compare = sub.add_parser(
        "compare",
        help="print a summary table of runs side by side, with each run's state",
        description="Print one row per run: learner, state (finished, running, interrupted, "
        "failed, empty), finished tasks, every classifier's average incremental accuracy, last "
        "accuracy and forgetting, and for long-tailed runs many/medium/few, GM, HM and lowest "
        "recall. RUN_DIR is a run directory or a folder of runs (all of them, newest first).",
    )
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")

    report = sub.add_parser(
        "report",
        help="write a comparison of runs as one self-contained HTML file",
        description="Write the summary table, accuracy curves, accuracy matrices, forgetting "
        "and (long-tailed runs) per-class accuracy of the runs, with each run's state and "
        "config, as one HTML file with the plots embedded: it opens without network access, "
        "for papers and CI artefacts. RUN_DIR is a run directory or a folder of runs.",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("-o", "--out", required=True, metavar="REPORT.html", help="output file")
    report.add_argument("--title", help="the report's title (default: the runs' names)")
    report.add_argument("--overwrite", action="store_true", help="replace an existing file")

    data = sub.add_parser("data", help="dataset folders: write a manifest (files, sizes, SHA-256)")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    manifest = data_sub.add_parser(
        "manifest",
        help="write the manifest of a dataset folder",
        description="Write the manifest of a dataset folder as JSON lines: every file's path, "
        "class folder, size and SHA-256, and one hash over them all. A run with "
        "data.manifest=FILE checks its folder against it before training and stops at the first "
        "missing, extra or changed file; every run records its folder's manifest hash. Hidden "
        "files (.cilkit_cache/) are left out. Hashes are cached by path, size and mtime in the "
        "folder's .cilkit_cache/ (about 1 GB/s the first time; later only the folder is listed).",
        epilog="example: cilkit data manifest /data/imagenet-r -o imagenet-r.manifest.jsonl",
    )
    manifest.add_argument("root", metavar="ROOT", help="the dataset folder (data.root)")
    manifest.add_argument(
        "-o", "--out", metavar="FILE", help="output file (default: ./<ROOT name>.manifest.jsonl)"
    )
    manifest.add_argument(
        "--rehash", action="store_true", help="hash every file, ignoring the cached hashes"
    )
    manifest.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return p

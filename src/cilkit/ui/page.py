"""The gradio page of ``cilkit ui``: Train, Runs and Compare, Inference and Tune tabs.

Only layout and wiring live here; every action is a :class:`~cilkit.ui.backend.Backend` call.
The Train form's inputs are generated from :attr:`Backend.fields` (the typed configs and the
registries): a new learner's options appear without a change here. Each input's label is its
config key, so a user (and the browser tests) find ``train.epochs`` by that name.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import gradio as gr

from cilkit.config import ExperimentConfig
from cilkit.errors import CilkitError
from cilkit.results.status import one_line
from cilkit.ui.backend import RUN_COLUMNS, Backend
from cilkit.ui.form import PRIMARY, FormField

CSS = """
.cilkit-progress { margin: 0.3em 0; font-family: monospace; }
.cilkit-progress progress { width: 12em; vertical-align: middle; }
.cilkit-error { color: #b00020; font-weight: bold; margin: 0.4em 0; }
.cilkit-message { margin: 0.4em 0; }
.cilkit-answer { margin: 0.6em 0; }
table.cilkit-top { display: inline-table; margin: 0.3em 1em 0.3em 0; border-collapse: collapse; }
table.cilkit-top td { padding: 0.1em 0.6em; border-bottom: 1px solid #ddd; }
"""

_SECTIONS = ("run", "data", "scenario", "backbone", "learner", "memory", "optim", "train", "engine")
_OPEN = ("learner",)


def _component(f: FormField) -> Any:
    info = f.doc[:300] if f.doc else None
    common = {"label": f.key, "info": info, "elem_id": "cfg-" + f.id.replace(":", "-")}
    if f.kind in ("bool", "section"):
        label = f.key + (" (on/off)" if f.kind == "section" else "")
        return gr.Checkbox(value=bool(f.default), **{**common, "label": label})
    if f.kind == "choice":
        choices = list(f.choices)
        return gr.Dropdown(choices=choices, value=f.default, allow_custom_value=False, **common)
    if f.kind in ("int", "float") and not f.optional:
        return gr.Number(value=f.default, precision=0 if f.kind == "int" else None, **common)
    if f.kind in ("int", "float"):  # a Number input cannot be blank: blank here means None
        text = "" if f.default is None else str(f.default)
        return gr.Textbox(value=text, placeholder="blank: none", **common)
    if f.kind in ("ints", "floats"):
        text = "" if f.default is None else ", ".join(str(v) for v in f.default)
        return gr.Textbox(value=text, **common)
    return gr.Textbox(value="" if f.default is None else str(f.default), **common)


def _train_tab(backend: Backend) -> tuple[dict[gr.components.Component, FormField], Any]:
    """The generated form; returns its inputs (component -> field)."""
    inputs: dict[Any, FormField] = {}
    by_id: dict[str, Any] = {}
    fields = backend.fields
    owned: dict[tuple[str, str], list[FormField]] = {}
    for f in fields:
        if f.owner is not None:
            owned.setdefault(f.owner, []).append(f)

    def make(f: FormField) -> None:
        comp = _component(f)
        if f.within:
            comp.visible = all(
                bool(next(x for x in fields if x.key == s).default) for s in f.within
            )
        inputs[comp] = f
        by_id[f.id] = comp

    gr.Markdown("### Main options")
    main = [f for f in fields if f.key in PRIMARY and f.owner is None]
    with gr.Row(equal_height=False):
        for column in (main[0::3], main[1::3], main[2::3]):
            with gr.Column():
                for f in column:
                    make(f)
    groups: dict[tuple[str, str], Any] = {}
    for section in _SECTIONS:
        rest = [
            f for f in fields if f.section == section and f.owner is None and f.key not in PRIMARY
        ]
        owners = sorted({o for o in owned if o[0].split(".")[0] == section})
        if not rest and not owners:
            continue
        title = "run (name, seed)" if section == "run" else section
        with gr.Accordion(f"{title} options", open=section in _OPEN):
            for f in rest:
                make(f)
            for owner in owners:
                name_field = next(x for x in fields if x.id == owner[0])
                with gr.Group(visible=name_field.default == owner[1]) as group:
                    gr.Markdown(f"**{owner[1]}** options (`{owner[0].rsplit('.', 1)[0]}`)")
                    for f in owned[owner]:
                        make(f)
                groups[owner] = group

    # A name field shows its class's options; a section switch shows its fields.
    for name_key in sorted({o[0] for o in groups}):
        mine = [(o, g) for o, g in groups.items() if o[0] == name_key]

        def show(value: str, mine: list = mine) -> list[Any]:
            return [gr.update(visible=o[1] == value) for o, _ in mine]

        by_id[name_key].change(show, by_id[name_key], [g for _, g in mine])
    for f in fields:
        if f.kind != "section":
            continue
        inside = [by_id[x.id] for x in fields if f.key in x.within]

        def toggle(on: bool, n: int = len(inside)) -> list[Any]:
            return [gr.update(visible=bool(on))] * n

        by_id[f.id].change(toggle, by_id[f.id], inside)
    return inputs, by_id


def build_page(backend: Backend) -> gr.Blocks:
    """The whole page over ``backend``."""
    with gr.Blocks(title="cilkit") as page:
        gr.Markdown(
            f"# cilkit\nRuns folder: `{backend.root}`. Runs started here are `cilkit run` "
            "processes; the same run directories as from a shell."
        )
        last_run = gr.State(None)
        tuned_run = gr.State(None)
        with gr.Tab("Train"):
            inputs, _ = _train_tab(backend)
            components = list(inputs)

            def values(*args: Any) -> dict[str, Any]:
                return {inputs[c].id: v for c, v in zip(components, args, strict=True)}

            with gr.Row():
                check = gr.Button("Show config")
                download = gr.DownloadButton("Download YAML", value=None, visible=False)
                launch = gr.Button("Launch", variant="primary")
            message = gr.Textbox(label="message", interactive=False)
            yaml_box = gr.Code(label="config.yaml (what will run)", language="yaml")
            progress = gr.HTML(backend.progress_html(), label="progress")
            with gr.Row():
                live_acc = gr.Plot(label="accuracy after each task (the newest run of this page)")
                live_epochs = gr.Plot(label="loss and train accuracy per epoch")
            live_lt = gr.Plot(label="long-tail metrics after each task (long-tailed runs)")

            def show_config(*args: Any) -> tuple[Any, ...]:
                text, error = backend.config_yaml(values(*args))
                if error:
                    return text, error, gr.update(visible=False)
                path = backend.save_yaml(values(*args))
                return text, "config valid", gr.update(value=str(path), visible=True)

            def start(*args: Any) -> tuple[Any, ...]:
                text, error = backend.config_yaml(values(*args))
                msg, run_dir = backend.launch(values(*args))
                return msg, text, None if run_dir is None else str(run_dir)

            check.click(show_config, components, [yaml_box, message, download])
            launch.click(start, components, [message, yaml_box, last_run])

        with gr.Tab("Runs and Compare"):
            with gr.Row():
                refresh = gr.Button("Refresh")
                stop = gr.Button("Stop (Ctrl-C)")
                resume = gr.Button("Resume")
            runs_table = gr.Dataframe(
                headers=RUN_COLUMNS,
                value=backend.run_rows(),
                interactive=False,
                label="runs",
                elem_id="runs-table",
            )
            chosen = gr.Dropdown(
                choices=[r[0] for r in backend.run_rows()],
                multiselect=True,
                label="runs to compare (one to stop or resume)",
            )
            runs_message = gr.Textbox(label="runs message", interactive=False)
            with gr.Row():
                compare = gr.Button("Compare", variant="primary")
                export = gr.Button("Export HTML report")
            report_file = gr.File(label="report", interactive=False)
            summary = gr.HTML(label="summary", elem_id="compare-summary")
            plots = {
                "accuracy": gr.Plot(label="accuracy after each task"),
                "accuracy_matrix": gr.Plot(label="accuracy matrices"),
                "forgetting": gr.Plot(label="forgetting per task"),
                "long_tail": gr.Plot(label="many / medium / few, GM, HM, lowest recall per task"),
                "per_class_accuracy": gr.Plot(label="per-class accuracy by training frequency"),
                "epochs": gr.Plot(label="loss and train accuracy per epoch"),
            }

            def refresh_runs(current: list[str] | None) -> tuple[Any, ...]:
                rows = backend.run_rows()
                names = [r[0] for r in rows]
                keep = [n for n in current or [] if n in names]
                return rows, gr.update(choices=names, value=keep)

            def one(names: list[str] | None) -> str:
                if not names or len(names) != 1:
                    raise CilkitError("choose exactly one run")
                return names[0]

            def do_stop(names: list[str] | None) -> str:
                try:
                    return backend.stop(one(names))
                except CilkitError as err:
                    return one_line(err)

            def do_resume(names: list[str] | None) -> str:
                try:
                    return backend.resume(one(names))
                except CilkitError as err:
                    return one_line(err)

            def do_compare(names: list[str] | None) -> tuple[Any, ...]:
                names = names or []
                try:
                    figures = backend.figures(names) if names else {}
                    table = backend.summary_html(names)
                    msg = f"{len(names)} run(s)" if names else "choose one or more runs"
                except CilkitError as err:
                    figures, table, msg = {}, "", one_line(err)
                return (msg, table, *(figures.get(k) for k in plots))

            def do_export(names: list[str] | None) -> tuple[Any, ...]:
                try:
                    path = backend.export_report(names or [])
                except CilkitError as err:
                    return one_line(err), None
                return f"report written: {backend.name_of(path)}", str(path)

            refresh.click(refresh_runs, chosen, [runs_table, chosen])
            stop.click(do_stop, chosen, runs_message)
            resume.click(do_resume, chosen, runs_message)
            compare.click(do_compare, chosen, [runs_message, summary, *plots.values()])
            export.click(do_export, chosen, [runs_message, report_file])

        with gr.Tab("Inference"):
            with gr.Row():
                infer_run = gr.Dropdown(
                    choices=backend.finished_runs(), label="finished run", value=None
                )
                checkpoint = gr.Dropdown(choices=[], label="task checkpoint", value=None)
                infer_refresh = gr.Button("Refresh runs")
            images = gr.File(file_count="multiple", label="images")
            predict = gr.Button("Predict top-5", variant="primary")
            answers = gr.HTML(label="answers")

            def pick_run(name: str | None) -> Any:
                names = backend.checkpoints(name) if name else []
                return gr.update(choices=names, value=names[0] if names else None)

            def do_predict(name: str | None, ckpt: str | None, files: list | None) -> str:
                paths = [getattr(f, "name", f) for f in files or []]
                return backend.predict(name or "", ckpt, paths)

            infer_run.change(pick_run, infer_run, checkpoint)
            infer_refresh.click(lambda: gr.update(choices=backend.finished_runs()), None, infer_run)
            predict.click(do_predict, [infer_run, checkpoint, images], answers)

        with gr.Tab("Tune"):
            from cilkit.registry import get_registry

            with gr.Row():
                tune_run = gr.Dropdown(choices=backend.finished_runs(), label="finished run")
                tune_refresh = gr.Button("Refresh runs")
            with gr.Row():
                loss = gr.Dropdown(
                    choices=get_registry("loss").names(), value="gml", label="tune.loss"
                )
                tune_epochs = gr.Number(value=10, precision=0, label="tune.epochs")
                tune_lr = gr.Number(value=0.01, label="tune.lr")
            with gr.Row():
                ensemble = gr.Checkbox(value=True, label="tune.ensemble")
                t_new = gr.Number(value=1.0, label="tune.t_new (new classifier's temperature)")
                t_old = gr.Number(value=1.0, label="tune.t_old (old classifier's temperature)")
            tune_button = gr.Button("Tune", variant="primary")
            tune_message = gr.Textbox(label="tune message", interactive=False)
            tune_table = gr.HTML(label="before / after / ensemble")

            def do_tune(name, loss_name, epochs, lr, ens, tn, to) -> tuple[Any, ...]:
                msg, run_dir = backend.tune(name or "", loss_name, epochs, lr, ens, tn, to)
                return msg, None if run_dir is None else str(run_dir)

            tune_refresh.click(lambda: gr.update(choices=backend.finished_runs()), None, tune_run)
            tune_button.click(
                do_tune,
                [tune_run, loss, tune_epochs, tune_lr, ensemble, t_new, t_old],
                [tune_message, tuned_run],
            )

        # Live updates: progress bars, the newest run's curves and a tuning's result.
        timer = gr.Timer(1.0)
        seen: dict[str, Any] = {}

        def tick(run_dir: str | None, tuned: str | None) -> tuple[Any, ...]:
            bars = backend.progress_html()
            acc = epochs = lt = gr.skip()
            if run_dir:
                stamp = _stamp(Path(run_dir))
                if seen.get(run_dir) != stamp:
                    seen[run_dir] = stamp
                    figures = backend.figures([backend.name_of(Path(run_dir))])
                    acc, epochs = figures.get("accuracy"), figures.get("epochs")
                    lt = figures.get("long_tail")
            tune_out: tuple[Any, ...] = (gr.skip(), gr.skip())
            if tuned:
                state, rows = backend.tune_result(tuned)
                tune_out = (state, _html_table(rows))
            return (bars, acc, epochs, lt, *tune_out)

        timer.tick(
            tick,
            [last_run, tuned_run],
            [progress, live_acc, live_epochs, live_lt, tune_message, tune_table],
            show_progress="hidden",
        )
    return page


def _html_table(rows: list[list[Any]]) -> str:
    if not rows:
        return ""

    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else html.escape(str("-" if v is None else v))

    head = "".join(f"<th>{cell(v)}</th>" for v in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows[1:])
    return f"<table class='cilkit-tune'><tr>{head}</tr>{body}</table>"


def _stamp(run_dir: Path) -> tuple[float, ...]:
    out = []
    for name in ("epochs.jsonl", "metrics.jsonl", "status.json"):
        try:
            out.append((run_dir / name).stat().st_mtime)
        except OSError:
            out.append(0.0)
    return tuple(out)


def serve(
    runs_root: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    start: ExperimentConfig | None = None,
    block: bool = True,
) -> tuple[gr.Blocks, Backend]:
    """Serve the page on ``host:port`` with ``runs_root`` the only folder it serves files from.

    A host other than loopback prints a warning: the page has no login."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        warnings.warn(
            f"cilkit ui: serving on {host}, reachable from other machines; the page has no "
            "login, anyone who reaches it can start runs",
            stacklevel=2,
        )
    backend = Backend(runs_root, start=start)
    page = build_page(backend)
    page.launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(backend.root)],
        css=CSS,
        prevent_thread_lock=not block,
        quiet=True,
        show_error=False,
    )
    return page, backend

"""What the web page does, as plain functions on a runs folder (no gradio here).

:class:`Backend` is the page's whole behaviour: the Train form's config and YAML, launching,
stopping and resuming runs (:class:`~cilkit.ui.runs.RunLauncher`), the runs table with states
and progress, the comparison (figures, summary table, HTML report), inference with a task
checkpoint and GML tuning. The gradio page (:mod:`cilkit.ui.page`) only lays out inputs and
calls these; the backend tests call them directly on fixture run directories.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from cilkit.config import ExperimentConfig
from cilkit.config.loader import dump_config, quickstart_config
from cilkit.errors import CilkitError
from cilkit.results.runs import RunInfo, list_runs, load_run
from cilkit.results.status import one_line
from cilkit.ui.form import FormField, form_fields, form_to_config
from cilkit.ui.runs import RunLauncher, run_progress, safe_name

RUN_COLUMNS = ["run", "state", "learner", "dataset", "tasks", "progress", "message"]


class Backend:
    """The page's behaviour over one runs folder.

    Args:
        runs_root: the folder the page reads runs from and creates runs in; nothing outside it
            is read or served.
        start: the config the Train form starts from (the embedded quickstart by default).
        launcher: starts the ``cilkit`` processes (one over ``runs_root`` by default).
    """

    def __init__(
        self,
        runs_root: str | Path,
        start: ExperimentConfig | None = None,
        launcher: RunLauncher | None = None,
    ) -> None:
        self.root = Path(runs_root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.start = start if start is not None else quickstart_config()
        self.fields: list[FormField] = form_fields(self.start)
        self.launcher = launcher or RunLauncher(self.root)
        self._predictors: dict[tuple[Path, str], Any] = {}

    # ---- Train ---------------------------------------------------------------------------------
    def config_yaml(self, values: dict[str, Any]) -> tuple[str, str]:
        """(the resolved YAML, "") for valid form values, else ("", the one-line error)."""
        try:
            return dump_config(form_to_config(self.fields, values)), ""
        except CilkitError as err:
            return "", one_line(err)

    def save_yaml(self, values: dict[str, Any]) -> Path:
        """The form's config as a YAML file under ``.ui/`` (for the download button)."""
        text, error = self.config_yaml(values)
        if error:
            raise CilkitError(error)
        name = safe_name(str(values.get("name") or self.start.name))
        self.launcher.ui_dir.mkdir(parents=True, exist_ok=True)
        path = self.launcher.ui_dir / f"{name}.yaml"
        path.write_text(text)
        return path

    def launch(self, values: dict[str, Any]) -> tuple[str, Path | None]:
        """Start ``cilkit run`` on the form's config: (message, run directory or None)."""
        text, error = self.config_yaml(values)
        if error:
            return f"not started: {error}", None
        cfg = form_to_config(self.fields, values)
        launched = self.launcher.launch(text, f"{cfg.name}-{cfg.learner.name}")
        return f"started {launched.run_dir.name}", launched.run_dir

    # ---- Runs ----------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        """Every run under the folder, newest first, plus runs this page started that have no
        files yet."""
        found = list_runs(self.root)
        known = {run.path.resolve() for run in found}
        for launched in self.launcher.launched.values():
            if launched.run_dir not in known:
                found.insert(
                    0,
                    load_run(launched.run_dir)
                    if launched.run_dir.exists()
                    else RunInfo(
                        launched.run_dir, launched.run_dir.name, "empty", None, {}, [], None
                    ),
                )
        return found

    def state_of(self, run: RunInfo) -> tuple[str, str]:
        """(state, message) with what the page knows beyond the files: a process it started
        that is starting up, or that ended before its run could record an error."""
        launched = self.launcher.launched.get(run.path.resolve())
        if launched is not None and run.state == "empty":
            if launched.alive:
                return "starting", ""
            message = self.launcher.exit_message(run.path)
            if message:
                return "failed", message
        message = run.error or ""
        if run.state == "interrupted":
            message = (message + "; " if message else "") + "resumable"
        return run.state, message

    def run_rows(self) -> list[list[Any]]:
        """The Runs table: one row per run (see :data:`RUN_COLUMNS`)."""
        rows = []
        for run in self.runs():
            state, message = self.state_of(run)
            progress = run_progress(run.path)
            total = progress["num_tasks"]
            tasks = f"{progress['tasks_done']}/{total}" if total else str(len(run.records))
            where = ""
            if state in ("running", "starting") and progress["label"]:
                where = f"{progress['label']} epoch {progress['epoch']}/{progress['epochs']}"
            rows.append(
                [self.name_of(run.path), state, run.learner, run.dataset, tasks, where, message]
            )
        return rows

    def name_of(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    def path_of(self, name: str) -> Path:
        return self.launcher.inside(self.root / name)

    def progress_html(self) -> str:
        """One pair of bars (run: tasks; task: epochs) per running run this page started."""
        parts = []
        for launched in self.launcher.running():
            p = run_progress(launched.run_dir)
            total = p["num_tasks"] or "?"
            where = p["label"] or "starting"
            parts.append(
                '<div class="cilkit-progress">'
                f"<b>{html.escape(launched.run_dir.name)}</b> "
                f"tasks {p['tasks_done']}/{total} "
                f'<progress value="{p["run_fraction"]:.3f}" max="1"></progress> '
                f"{html.escape(where)} epoch {p['epoch']}/{p['epochs']} "
                f'<progress value="{p["task_fraction"]:.3f}" max="1"></progress></div>'
            )
        return "".join(parts) or "<div class='cilkit-progress'>no run of this page is running</div>"

    def stop(self, name: str) -> str:
        try:
            return self.launcher.stop(self.path_of(name))
        except CilkitError as err:
            return one_line(err)

    def resume(self, name: str) -> str:
        try:
            path = self.path_of(name)
            run = load_run(path)
            if run.state not in ("interrupted", "failed"):
                return f"{name} is {run.state}: only an interrupted run resumes"
            self.launcher.resume(path)
            return f"resumed {name}"
        except CilkitError as err:
            return one_line(err)

    # ---- Compare -------------------------------------------------------------------------------
    def load(self, names: list[str]) -> list[RunInfo]:
        return [load_run(self.path_of(n)) for n in names]

    def figures(self, names: list[str]) -> dict[str, Any]:
        """Every comparison figure of the chosen runs by key, and their per-epoch curves
        (``epochs``); a key is missing when the runs allow no such figure."""
        from cilkit.results.figures import comparison_figures, epoch_curves_figure

        runs = self.load(names)
        out: dict[str, Any] = {f.key: f.figure for f in comparison_figures(runs)}
        epochs = epoch_curves_figure(runs)
        if epochs is not None:
            out["epochs"] = epochs
        return out

    def summary_html(self, names: list[str]) -> str:
        from cilkit.results.report_html import summary_table_html

        return summary_table_html(self.load(names)) if names else ""

    def export_report(self, names: list[str]) -> Path:
        """The comparison as one HTML file under ``.ui/reports/``."""
        from cilkit.results.report_html import write_html_report

        if not names:
            raise CilkitError("choose one or more runs to export")
        folder = self.launcher.ui_dir / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return write_html_report(self.load(names), folder / f"report-{stamp}.html")

    # ---- Inference -----------------------------------------------------------------------------
    def finished_runs(self) -> list[str]:
        return [self.name_of(r.path) for r in self.runs() if r.state == "finished"]

    def checkpoints(self, name: str) -> list[str]:
        from cilkit.inference import task_checkpoints

        return task_checkpoints(self.path_of(name)) if name else []

    def predict(self, name: str, checkpoint: str | None, files: list[str], k: int = 5) -> str:
        """The top-``k`` of every classifier for each file, as HTML; a file that cannot be
        used gets its one-line reason instead."""
        from cilkit.inference import Answer, Predictor

        if not name:
            return _message("choose a finished run")
        if not files:
            return _message("upload one or more images")
        try:
            path = self.path_of(name)
            key = (path, checkpoint or "")
            if key not in self._predictors:
                self._predictors.clear()  # one model in memory at a time
                self._predictors[key] = Predictor.from_run(path, checkpoint or None)
            predictor = self._predictors[key]
            answers = predictor.predict_files([str(f) for f in files], k)
        except CilkitError as err:
            return _message(one_line(err))
        blocks = []
        for answer in answers:
            if not isinstance(answer, Answer):
                blocks.append(_message(str(answer), "cilkit-error"))
                continue
            cells = []
            for classifier, top in answer.top.items():
                rows = "".join(
                    f"<tr><td>{html.escape(str(c))}</td><td>{100 * p:.1f}%</td></tr>"
                    for c, p in top
                )
                cells.append(
                    f"<table class='cilkit-top'><caption>{html.escape(classifier.upper())}"
                    f"</caption>{rows}</table>"
                )
            blocks.append(
                f"<div class='cilkit-answer'><b>{html.escape(answer.name)}</b>"
                f" ({html.escape(predictor.checkpoint)}){''.join(cells)}</div>"
            )
        return "".join(blocks)

    # ---- Tune ----------------------------------------------------------------------------------
    def tune(
        self,
        name: str,
        loss: str = "gml",
        epochs: int = 10,
        lr: float = 0.01,
        ensemble: bool = True,
        t_new: float = 1.0,
        t_old: float = 1.0,
    ) -> tuple[str, Path | None]:
        """Start ``cilkit tune --from`` on a finished run: (message, the tuned run's folder)."""
        if not name:
            return "choose a finished run", None
        options = ["--loss", loss, "--epochs", str(int(epochs)), "--lr", str(float(lr))]
        if ensemble:
            options += ["--ensemble", "--t-new", str(float(t_new)), "--t-old", str(float(t_old))]
        try:
            launched = self.launcher.tune(self.path_of(name), options)
        except CilkitError as err:
            return one_line(err), None
        return f"tuning {name} into {launched.run_dir.name}", launched.run_dir

    def tune_result(self, run_dir: str | Path | None) -> tuple[str, list[list[Any]]]:
        """(state line, before/after/ensemble rows) of a tuning started from the page."""
        from cilkit.metrics import LONG_TAIL_SCALARS

        if not run_dir:
            return "", []
        path = Path(run_dir)
        launched = self.launcher.launched.get(path.resolve())
        summary_path = path / "summary.json"
        if not summary_path.exists():
            if launched is not None and launched.alive:
                return f"tuning {path.name} ...", []
            message = self.launcher.exit_message(path) if launched is not None else None
            return f"tuning failed: {message or 'no result written'}", []
        import json

        summary = json.loads(summary_path.read_text())
        keys = [k for k in ("accuracy", *LONG_TAIL_SCALARS) if k in summary.get("before", {})]
        rows = []
        for which in ("before", "after", "ensemble"):
            if which in summary:
                rows.append([which, *(summary[which].get(k) for k in keys)])
        return f"tuned: {path.name}", [["", *keys], *rows]


def _message(text: str, cls: str = "cilkit-message") -> str:
    return f"<div class='{cls}'>{html.escape(text)}</div>"

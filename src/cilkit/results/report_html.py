"""The comparison report as one self-contained HTML file (:func:`write_html_report`).

One self-contained page: inline CSS only, figures as ``data:image/png;base64`` URIs, no script,
font, stylesheet or link to anything outside the file, so it opens offline, in a CI artefact
viewer or attached to a paper's supplementary material.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path

import yaml

from cilkit import __version__
from cilkit.results.compare import state_lines, table_cells
from cilkit.results.figures import comparison_figures
from cilkit.results.io import atomic_write_text
from cilkit.results.runs import RunInfo, unique_names

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
h1 { margin-bottom: 0.2em; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f3f3f3; }
td.number, td.int { text-align: right; font-variant-numeric: tabular-nums; }
td.state-failed { color: #b00020; }
td.state-running { color: #1565c0; }
td.state-interrupted, td.state-empty { color: #8a6d00; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.9em; }
details { margin: 0.4em 0; }
summary { cursor: pointer; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def summary_table_html(runs: Sequence[RunInfo], classifiers: Sequence[str] | None = None) -> str:
    """The summary table as an HTML table (the report's and the UI's)."""
    titles, cells, kinds = table_cells(runs, classifiers)
    head = "".join(f"<th>{_e(t)}</th>" for t in titles)
    body = []
    for row in cells:
        tds = []
        for title, value, kind in zip(titles, row, kinds, strict=True):
            cls = f"state-{value}" if title == "state" else kind
            tds.append(f'<td class="{_e(cls)}">{_e(value)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _runs_list(runs: Sequence[RunInfo]) -> str:
    items = [
        f"<li><b>{_e(r.name)}</b>: {_e(r.state)}, {_e(r.learner)} on {_e(r.dataset)}, "
        f"{r.num_tasks} task(s) finished, <code>{_e(r.path)}</code></li>"
        for r in runs
    ]
    notes = [f"<li>{_e(line)}</li>" for line in state_lines(runs)]
    out = "<ul>\n" + "\n".join(items) + "\n</ul>"
    if notes:
        out += "\n<p>Unfinished runs:</p>\n<ul>\n" + "\n".join(notes) + "\n</ul>"
    return out


def _config(run: RunInfo) -> str:
    text = yaml.safe_dump(run.config, sort_keys=False, default_flow_style=None)
    return (
        f"<details>\n<summary>{_e(run.name)}: config.yaml</summary>\n"
        f"<pre>{_e(text)}</pre>\n</details>"
    )


def html_report(
    runs: Sequence[RunInfo],
    title: str | None = None,
    classifiers: Sequence[str] | None = None,
) -> str:
    """The report as one HTML document (see :func:`write_html_report`)."""
    runs = unique_names(runs)
    title = title or "cilkit comparison: " + ", ".join(r.name for r in runs)
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    figures = []
    for fig in comparison_figures(runs, classifiers):
        data = base64.b64encode(fig.png()).decode("ascii")
        figures.append(
            f'<figure id="{_e(fig.key)}">\n<img src="data:image/png;base64,{data}" '
            f'alt="{_e(fig.title)}">\n<figcaption>{_e(fig.title)}</figcaption>\n</figure>'
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{_e(date)}, cilkit {_e(__version__)}</p>',
        "<h2>Runs</h2>",
        _runs_list(runs),
        "<h2>Summary</h2>",
        "<p>Accuracies in %, forgetting (fgt) in percentage points; avg: average incremental "
        "accuracy, last: accuracy after the last task; many/medium/few: shot-group accuracy, "
        "GM/HM/LR: geometric mean, harmonic mean and lowest of the class recalls (long-tailed "
        "runs). Unfinished runs show their finished tasks.</p>",
        summary_table_html(runs, classifiers),
        "<h2>Figures</h2>",
        *(figures or ["<p>No run has a finished task to plot.</p>"]),
        "<h2>Configs</h2>",
        *(_config(r) for r in runs),
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def write_html_report(
    runs: Sequence[RunInfo],
    out_path: str | Path,
    title: str | None = None,
    classifiers: Sequence[str] | None = None,
) -> Path:
    """Write the comparison as one self-contained HTML file (atomically): title, date, cilkit
    version, the runs and their states, the summary table, every figure as an embedded PNG, and
    each run's config in a collapsible section. It needs no network access to open.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.
    """
    target = Path(out_path)
    atomic_write_text(target, html_report(runs, title=title, classifiers=classifiers))
    return target

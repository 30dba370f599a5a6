"""Layout checks on drawn figures: boxes in display pixels, compared after a draw."""

from __future__ import annotations

from typing import Any

from matplotlib.transforms import Bbox

TOLERANCE = 1.0  # pixels: anti-aliasing and rounding


def draw(fig: Any) -> Any:
    """Run the constrained layout and return the renderer."""
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def extent(artist: Any, renderer: Any) -> Bbox:
    return artist.get_window_extent(renderer)


def overlap(a: Bbox, b: Bbox) -> bool:
    """Whether two boxes share more than :data:`TOLERANCE` pixels in both directions."""
    return (
        min(a.x1, b.x1) - max(a.x0, b.x0) > TOLERANCE
        and min(a.y1, b.y1) - max(a.y0, b.y0) > TOLERANCE
    )


def inside(inner: Bbox, outer: Bbox) -> bool:
    return (
        inner.x0 >= outer.x0 - TOLERANCE
        and inner.y0 >= outer.y0 - TOLERANCE
        and inner.x1 <= outer.x1 + TOLERANCE
        and inner.y1 <= outer.y1 + TOLERANCE
    )


def assert_legend_above(fig: Any, ax: Any) -> None:
    """The legend is above ``ax`` (not over its data), inside the figure and below the title."""
    renderer = draw(fig)
    legend = ax.get_legend()
    assert legend is not None
    box = extent(legend, renderer)
    area = ax.get_window_extent(renderer)
    assert not overlap(box, area), f"legend {box} covers the plot area {area}"
    assert box.y0 >= area.y1 - TOLERANCE
    assert inside(box, fig.bbox), f"legend {box} leaves the figure {fig.bbox}"
    title = fig._suptitle
    if title is not None and title.get_text():
        assert not overlap(extent(title, renderer), box)
        assert inside(extent(title, renderer), fig.bbox)


def visible_tick_labels(axis: Any, renderer: Any) -> list[Any]:
    """The non-empty major tick labels that are drawn (their tick lies inside the view)."""
    lo, hi = sorted(axis.get_view_interval())
    labels = []
    for tick, loc in zip(axis.get_major_ticks(), axis.get_majorticklocs(), strict=False):
        for label in (tick.label1, tick.label2):
            if label.get_visible() and label.get_text() and lo <= loc <= hi:
                labels.append(label)
    return labels


def assert_no_overlapping_labels(labels: list[Any], renderer: Any) -> None:
    boxes = [extent(label, renderer) for label in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not overlap(a, b), f"tick labels overlap: {a} and {b}"

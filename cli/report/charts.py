"""The report's charts, drawn with matplotlib and returned as SVG data URIs (text as paths: no fonts to fetch).

matplotlib is imported inside each function through `_figure`, so importing this module costs nothing.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from pipelines.scalars import Series

BLUE, GREY, RED, GREEN = "#3b6ea8", "#9aa5b1", "#c8553d", "#4c9a6a"
# Scalars that are bookkeeping rather than a curve worth a panel.
SKIPPED_TAGS = {"step", "epoch", "tokens"}
MAX_PANELS = 9
EXPERT_LOAD = "expert_load/"  # an MoE stage's per-layer, per-expert token shares (jobs.train.moe)


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _data_uri(fig) -> str:
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "llmctl"}):
        fig.savefig(buf, format="svg")
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def hbars(labels: list[str], values: list[float], title: str, xlabel: str, color: str = BLUE,
          annotate: list[str] | None = None) -> str:  # fmt: skip
    """Horizontal bars, first label on top, each annotated with its value (or the given text)."""
    fig, axes = _figure(8, 0.45 * len(labels) + 1.2)
    ax = axes[0][0]
    positions = list(range(len(labels)))[::-1]
    ax.barh(positions, values, color=color)
    ax.set_yticks(positions, labels)
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    top = max(values, default=0) or 1
    ax.set_xlim(0, top * 1.18)
    for y, v, text in zip(positions, values, annotate or [_num(v) for v in values], strict=True):
        ax.text(v + top * 0.01, y, text, va="center", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return _data_uri(fig)


def funnel(rows: dict[str, Any]) -> str:
    """Rows remaining after each step of a data stage: read, quarantine, quality filters, exact and near dedup."""
    steps = [("read", rows["in"]), ("after quarantine", rows["in"] - rows.get("quarantined", 0))]
    steps.append(("after quality filters", steps[-1][1] - rows.get("filtered", 0)))
    steps.append(("after exact dedup", steps[-1][1] - rows.get("duplicates_exact", 0)))
    steps.append(("after near dedup (kept)", steps[-1][1] - rows.get("duplicates_near", 0)))
    labels, values = [s[0] for s in steps], [s[1] for s in steps]
    total = values[0] or 1
    notes = [f"{v:,} ({100 * v / total:.1f}%)" for v in values]
    return hbars(labels, values, "Data funnel: rows remaining after each step", "rows", BLUE, notes)


def timings(names: list[str], seconds: list[float], cached: list[bool]) -> str:
    """Wall time per finished stage; stages this run reused from an earlier run are grey."""
    fig, axes = _figure(8, 0.45 * len(names) + 1.2)
    ax = axes[0][0]
    positions = list(range(len(names)))[::-1]
    ax.barh(positions, seconds, color=[GREY if c else GREEN for c in cached])
    ax.set_yticks(positions, [f"{n} (cached)" if c else n for n, c in zip(names, cached, strict=True)])
    ax.set_title("Stage wall time", loc="left")
    ax.set_xlabel("seconds")
    top = max(seconds, default=0) or 1
    ax.set_xlim(0, top * 1.15)
    for y, s in zip(positions, seconds, strict=True):
        ax.text(s + top * 0.01, y, f"{s:.1f}s", va="center", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return _data_uri(fig)


def curve_panels(scalars: dict[str, Series]) -> list[tuple[str, dict[str, Series]]]:
    """(title, curves) per panel: one for every loss (train and eval together), then one per other scalar (lr,
    grad norm, tokens/s, reward, KL, ...): whatever the stage logged, so any training stage kind gets its curves.
    An MoE model's per-expert shares are the heat map's, not curves."""
    scalars = {t: s for t, s in scalars.items() if not t.startswith(EXPERT_LOAD)}
    # The training loss first (it takes the first colour), then eval and other losses.
    losses = {t: scalars[t] for t in sorted(scalars, key=lambda t: ("eval" in t, t)) if "loss" in t and scalars[t]}
    # A non-loss scalar logged once is a final figure (params, FLOPs per token), not a curve: it is in the table.
    others = {t: s for t, s in scalars.items() if t not in losses and t not in SKIPPED_TAGS and len(s) > 1}
    panels: list[tuple[str, dict[str, Series]]] = [("loss", losses)] if losses else []
    panels += [(t, {t: s}) for t, s in others.items()]
    return panels[:MAX_PANELS]


def curves(stage: str, scalars: dict[str, Series]) -> str | None:
    """The stage's curves, three panels to a row (see `curve_panels`)."""
    panels = curve_panels(scalars)
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = _figure(4.2 * cols, 3.0 * rows, rows, cols)
    for i, ax in enumerate(ax for row in axes for ax in row):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        title, series = panels[i]
        for tag, points in series.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=tag)
        ax.set_title(f"{stage}: {title}", loc="left", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return _data_uri(fig)


def expert_load(stage: str, scalars: dict[str, Series]) -> str | None:
    """An MoE model's routing at its last logged step: each layer's share of routed tokens per expert (the
    training loop's `expert_load/layer<i>/expert<j>` scalars) as a heat map; None for a dense model."""
    cells: dict[tuple[int, int], tuple[int, float]] = {}
    for tag, points in scalars.items():
        if tag.startswith(EXPERT_LOAD) and points:
            layer, expert = tag.removeprefix(EXPERT_LOAD).split("/")
            cells[int(layer.removeprefix("layer")), int(expert.removeprefix("expert"))] = points[-1]
    if not cells:
        return None
    layers, experts = 1 + max(i for i, _ in cells), 1 + max(j for _, j in cells)
    grid = [[cells.get((i, j), (0, 0.0))[1] for j in range(experts)] for i in range(layers)]
    fig, axes = _figure(min(12.0, 2.5 + 0.5 * experts), 1.4 + 0.3 * layers)
    ax = axes[0][0]
    image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0)
    step = max(point[0] for point in cells.values())
    ax.set_title(f"{stage}: share of each layer's tokens per expert at step {step} (even: {1 / experts:.3g})",
                 loc="left", fontsize=10)  # fmt: skip
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_xticks(range(experts))
    ax.set_yticks(range(layers))
    fig.colorbar(image, ax=ax)
    return _data_uri(fig)


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3g}"

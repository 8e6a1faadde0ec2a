"""Report figures, rendered with matplotlib's Agg canvas (no pyplot, no global state).

Each function returns a PNG as bytes, or ``None`` when there is nothing to draw.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import random
import warnings
from collections.abc import Sequence

import igraph as ig
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ._data import CAPABILITIES, Graph, Timeline
from ._safe import mpl_text

DPI = 96
_CAP_COLORS = {
    "coding": "#4e79a7", "math": "#f28e2b", "agentic": "#e15759", "reasoning": "#76b7b2",
    "roleplay": "#59a14f", "writing": "#edc948", "chat": "#b07aa1", "other": "#bab0ac",
}
_PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
    "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d",
    "#31a354", "#756bb1", "#bd9e39", "#fdae6b",
)


def campaign_color(rank: int) -> str:
    return _PALETTE[rank % len(_PALETTE)]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # e.g. missing glyphs for exotic characters
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def timeline_plot(tl: Timeline, labels: Sequence[str]) -> bytes | None:
    """Small multiples: requests per hour (or day) per campaign, model first-appearances."""
    ranks = sorted(r for r in tl.counts if r < len(labels))
    if not ranks or tl.start is None or tl.end is None:
        return None
    step = dt.timedelta(hours=1) if tl.unit == "hour" else dt.timedelta(days=1)
    t0 = _floor(tl.start, tl.unit)
    n_bins = int((_floor(tl.end, tl.unit) - t0) / step) + 1
    x = np.array([t0 + i * step for i in range(n_bins)], dtype="datetime64[s]")
    fig = Figure(figsize=(11, 1.55 * len(ranks) + 0.9))
    axes = fig.subplots(len(ranks), 1, sharex=True, squeeze=False)[:, 0]
    for ax, rank in zip(axes, ranks, strict=True):
        y = np.zeros(n_bins)
        for t, n in tl.counts[rank]:
            i = int((_floor(t, tl.unit) - t0) / step)
            if 0 <= i < n_bins:
                y[i] += n
        color = campaign_color(rank)
        ax.fill_between(x, y, step="post", color=color, alpha=0.25, linewidth=0)
        ax.step(x, y, where="post", color=color, linewidth=1.0)
        ymax = max(float(y.max()), 1.0)
        ax.set_ylim(0, ymax * 1.35)
        for k, (model, first) in enumerate(tl.models.get(rank, [])):
            xm = np.datetime64(first, "s")
            ax.axvline(xm, color="#333333", linestyle="--", linewidth=0.8, alpha=0.7)
            ax.text(xm, ymax * (1.28 - 0.14 * (k % 3)), " " + mpl_text(model, 28),
                    fontsize=7, va="top", ha="left", color="#333333")
        ax.set_ylabel(f"req/{tl.unit}", fontsize=8)
        ax.set_title(f"#{rank + 1}  {mpl_text(labels[rank], 48)}", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("time (UTC); dashed lines: first request to each model", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


def _floor(t: dt.datetime, unit: str) -> dt.datetime:
    t = t.replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if unit == "day" else t


def capability_plot(mix: dict[int, dict[str, int]], labels: Sequence[str]) -> bytes | None:
    """Stacked horizontal bars of capability shares per campaign (+ non-campaign baseline)."""
    ranks = sorted(r for r in mix if 0 <= r < len(labels))
    if not ranks:
        return None
    rows = [(f"#{r + 1} {mpl_text(labels[r], 30)}", mix[r]) for r in ranks]
    if -1 in mix:
        rows.append(("all non-campaign traffic", mix[-1]))
    fig = Figure(figsize=(11, 0.32 * len(rows) + 1.4))
    ax = fig.subplots()
    ypos = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    totals = np.array([max(sum(c.values()), 1) for _, c in rows], dtype=float)
    for cap in CAPABILITIES:
        share = np.array([c.get(cap, 0) for _, c in rows], dtype=float) / totals
        ax.barh(ypos, share, left=left, color=_CAP_COLORS[cap], label=cap, height=0.75,
                edgecolor="white", linewidth=0.5)
        for y, lft, s in zip(ypos, left, share, strict=True):
            if s >= 0.07:
                ax.text(lft + s / 2, y, f"{s:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if cap not in ("writing", "other") else "#222222")
        left += share
    ax.set_yticks(ypos, [r[0] for r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _p: f"{v:.0%}")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(ncol=len(CAPABILITIES), fontsize=8, loc="lower center",
              bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig)


def graph_plot(g: Graph, labels: Sequence[str], legend_max: int = 10) -> bytes | None:
    """Account-link graph: nodes coloured by campaign, edge width by link weight."""
    n = len(g.nodes)
    if n == 0:
        return None
    graph = ig.Graph(n=n, edges=[(a, b) for a, b, _ in g.edges], directed=False)
    rng = np.random.default_rng(20240601)
    seed = rng.uniform(-1, 1, size=(n, 2)).tolist()
    weights = [max(w, 1e-6) for _, _, w in g.edges] or None
    if g.edges:
        # Fruchterman-Reingold draws from igraph's global RNG: seed it for a reproducible
        # picture, then restore igraph's default generator (the ``random`` module).
        ig.set_random_number_generator(random.Random(20240601))
        try:
            layout = graph.layout_fruchterman_reingold(seed=seed, niter=500, weights=weights)
        finally:
            ig.set_random_number_generator(random)
        xy = np.array(layout.coords, dtype=float)
    else:
        xy = np.array(seed, dtype=float)
    fig = Figure(figsize=(11, 8.5))
    ax = fig.subplots()
    if g.edges:
        w = np.array([e[2] for e in g.edges], dtype=float)
        wmax = float(np.nanmax(w)) if np.isfinite(w).any() and np.nanmax(w) > 0 else 1.0
        widths = 0.3 + 2.7 * np.clip(np.nan_to_num(w) / wmax, 0, 1)
        segs = [[xy[a], xy[b]] for a, b, _ in g.edges]
        ax.add_collection(LineCollection(segs, linewidths=widths, colors="#777777",
                                         alpha=0.35, zorder=1))
    colors = [campaign_color(k) if k >= 0 else ("#b2182b" if k == -1 else "#cfcfcf")
              for k in g.group]
    scale = float(np.clip((300 / n) ** 0.5, 1.0, 3.0))     # bigger dots for small graphs
    sizes = [scale * (34 if k >= 0 else (26 if k == -1 else 12)) for k in g.group]
    order = np.argsort([0 if k == -2 else 1 for k in g.group], kind="stable")
    ax.scatter(xy[order, 0], xy[order, 1], s=np.array(sizes)[order],
               c=np.array(colors)[order], edgecolors="white", linewidths=0.4, zorder=2)
    ax.set_axis_off()
    ax.autoscale_view()
    handles: list[Line2D | Patch] = []
    present = sorted({k for k in g.group if k >= 0})
    for k in present[:legend_max]:
        handles.append(Patch(color=campaign_color(k), label=f"#{k + 1} {mpl_text(labels[k], 26)}"
                             if k < len(labels) else f"#{k + 1}"))
    if len(present) > legend_max:
        handles.append(Patch(color="#ffffff", label=f"... {len(present) - legend_max} more"))
    if -1 in g.group:
        handles.append(Patch(color="#b2182b", label="linked neighbour, flagged"))
    if -2 in g.group:
        handles.append(Patch(color="#cfcfcf", label="linked neighbour, not flagged"))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                  frameon=False)
    fig.tight_layout()
    return _png(fig)


def score_hist_plot(hist: list[tuple[int, bool, int]], bins: int,
                    threshold: float | None) -> bytes | None:
    """Histogram of account scores (log y), flagged accounts stacked, threshold marked."""
    if not hist:
        return None
    normal = np.zeros(bins)
    flagged = np.zeros(bins)
    for b, f, n in hist:
        (flagged if f else normal)[min(max(b, 0), bins - 1)] += n
    edges = np.linspace(0, 1, bins + 1)
    width = 1.0 / bins
    fig = Figure(figsize=(11, 3.6))
    ax = fig.subplots()
    ax.bar(edges[:-1], normal, width=width, align="edge", color="#9ecae1",
           edgecolor="white", linewidth=0.4, label="not flagged")
    ax.bar(edges[:-1], flagged, width=width, align="edge", bottom=normal, color="#d6604d",
           edgecolor="white", linewidth=0.4, label="flagged")
    ax.set_yscale("log")
    top = float((normal + flagged).max())
    ax.set_ylim(0.7, max(top, 1.0) * 3)
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
        ax.text(threshold, max(top, 1.0) * 2.2, f"  threshold {threshold:.3g}", fontsize=8,
                va="top", ha="left" if threshold < 0.8 else "right")
    ax.set_xlim(0, 1)
    ax.set_xlabel("account score", fontsize=9)
    ax.set_ylabel("accounts (log)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(0.02, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)

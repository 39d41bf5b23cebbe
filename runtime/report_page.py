"""Drawing `fp report`: one self-contained HTML page, every plot an inline SVG from matplotlib.

Nothing on the page is fetched: no scripts, fonts or styles from the network, so it opens the same
on a laptop, attached to a ticket, or years later. A small inline script marks each plot that the
browser laid out with visible marks (`data-drawn`), which the headless-browser test reads.
"""

from __future__ import annotations

import html
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to SVG only

import matplotlib.pyplot as plt
import numpy as np

from featureplane.pipelines.errors import TerminalError
from featureplane.runtime.report import ReportData, Series, gather

plt.rcParams.update({"svg.fonttype": "path", "font.size": 9, "axes.spines.top": False,
                     "axes.spines.right": False, "figure.dpi": 96})
COLORS = {"fresh": "#2a9d8f", "stale": "#e9c46a", "no_data": "#e76f51", "matched": "#2a9d8f",
          "mismatched": "#e63946", "offline": "#264653", "served": "#f4a261"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #1d3557; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccd; }
.meta { color: #557; } .empty { color: #886; font-style: italic; }
figure.plot { margin: 0.5rem 0; } figure.plot svg { width: 100%; height: auto; }
table { border-collapse: collapse; } td, th { padding: 0.2rem 0.8rem; text-align: left; }
"""

# Marks every plot whose SVG the browser laid out with visible lines, bars or patches.
CHECK = """
for (const fig of document.querySelectorAll('figure.plot')) {
  const svg = fig.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const marks = svg ? [...svg.querySelectorAll('path, use')].filter(e => {
    const b = e.getBoundingClientRect(); return b.width > 0 || b.height > 0; }).length : 0;
  fig.dataset.drawn = (box.width > 100 && box.height > 50 && marks > 10) ? 'yes' : 'no';
  fig.dataset.marks = String(marks);
}
document.body.dataset.plots = String(document.querySelectorAll('figure.plot[data-drawn="yes"]').length);
"""


def _svg(fig: plt.Figure, name: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return f'<figure class="plot" data-plot="{name}">{text[text.index("<svg"):]}</figure>'


def _empty(why: str) -> str:
    return f'<p class="empty">{html.escape(why)}</p>'


def _progress(series: list[Series], first_at: str | None) -> str:
    if not series:
        return _empty("No progress samples yet: they are written as workers commit (run `fp worker`).")
    consumers = sorted({(s.consumer, s.stream) for s in series})
    oldest = max((a for s in series for a in s.watermark_age_s if a is not None), default=0.0)
    unit, per = ("days", 86_400) if oldest > 3 * 86_400 else ("hours", 3_600) if oldest > 3 * 3_600 else ("s", 1)
    fig, axes = plt.subplots(len(consumers), 2, figsize=(11, 2.6 * len(consumers)), squeeze=False,
                             sharex=True)
    for row, (consumer, stream) in enumerate(consumers):
        lag_ax, age_ax = axes[row]
        for s in series:
            if (s.consumer, s.stream) != (consumer, stream):
                continue
            lag_ax.plot(s.seconds, s.lag, label=f"p{s.partition}", linewidth=1.2, marker=".", markersize=3)
            ages = [math.nan if a is None else a / per for a in s.watermark_age_s]
            age_ax.plot(s.seconds, ages, label=f"p{s.partition}", linewidth=1.2, marker=".", markersize=3)
        lag_ax.set_title(f"{consumer} on {stream}: records waiting", loc="left")
        age_ax.set_title(f"{consumer}: event-time watermark age ({unit})", loc="left")
        lag_ax.set_ylabel("records")
        for ax in (lag_ax, age_ax):
            ax.set_xlabel(f"seconds since {first_at}")
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        lag_ax.legend(fontsize=7, ncol=4, frameon=False)
    fig.tight_layout()
    return _svg(fig, "progress")


def _freshness(data: ReportData) -> str:
    if not data.freshness:
        return _empty("No persisted snapshots yet: serve requests and flush the outbox (`fp worker`).")
    groups = [f.group for f in data.freshness]
    totals = np.array([f.fresh + f.stale + f.no_data for f in data.freshness], dtype=float)
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(groups) + 1.2))
    left = np.zeros(len(groups))
    for state in ("fresh", "stale", "no_data"):
        share = np.array([getattr(f, state) for f in data.freshness]) / totals
        ax.barh(groups, share, left=left, color=COLORS[state], label=state.replace("_", " "))
        left += share
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of served (key, group) answers, {data.snapshots} snapshots")
    ax.legend(ncol=3, frameon=False, loc="lower right", bbox_to_anchor=(1, 1))
    ax.invert_yaxis()
    return _svg(fig, "freshness")


def _parity(data: ReportData) -> str:
    if not data.parity:
        return _empty("No parity run yet: `fp parity` rebuilds served snapshots and compares hashes.")
    labels = [f"{p.checked_at[:19]}\n{p.parity_run_id[-8:]}" for p in data.parity]
    matched = [p.matched for p in data.parity]
    mismatched = [p.mismatched for p in data.parity]
    fig, ax = plt.subplots(figsize=(11, 3))
    x = np.arange(len(labels))
    ax.bar(x, matched, color=COLORS["matched"], label="matched")
    ax.bar(x, mismatched, bottom=matched, color=COLORS["mismatched"], label="mismatched")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("snapshots")
    ax.legend(ncol=2, frameon=False, loc="lower right", bbox_to_anchor=(1, 1))
    return _svg(fig, "parity")


def _failures(data: ReportData) -> str:
    if not data.failures:
        return _empty("The failure ledger is empty: every record was applied.")
    labels = [f"{consumer}: {reason}" for consumer, reason, _ in data.failures]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(labels) + 1.2))
    ax.barh(labels, [n for *_, n in data.failures], color="#e76f51")
    ax.set_xlabel("records in the failure ledger")
    ax.invert_yaxis()
    return _svg(fig, "failures")


def _distributions(data: ReportData) -> str:
    if data.dataset_id is None:
        return _empty("No dataset built yet: `fp ofs build` with a dataset_build intent.")
    shown = [d for d in data.distributions if d.offline or d.served]
    if not shown:
        return _empty(f"Dataset {data.dataset_id} has no feature values to compare.")
    ncols = 4
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(11, 1.9 * nrows), squeeze=False)
    for ax, dist in zip(axes.flat, shown, strict=False):
        both = np.array(dist.offline + dist.served)
        edges = np.histogram_bin_edges(both, bins=min(30, max(1, len(np.unique(both)))))
        for name, values in (("offline", dist.offline), ("served", dist.served)):
            if values:
                ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.3, color=COLORS[name],
                        label=f"{name} ({len(values)})")
        ax.set_title(dist.column.replace("__", " "), fontsize=7, loc="left")
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, frameon=False)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _svg(fig, "distributions")


def render(data: ReportData) -> str:
    """The whole page as one HTML string."""
    sections = [
        ("Lag and watermark age per partition",
         "Records on the bus not yet applied, and wall clock minus the newest event time applied, sampled as "
         "each consumer committed (replayed history is old by design, so its age is large and flat).",
         _progress(data.progress, data.first_sample_at)),
        ("Freshness per group", "Of the (key, group) answers in persisted snapshots: fresh, stale (older than "
         "the group's TTL) or no data.", _freshness(data)),
        ("Parity", "Served snapshots rebuilt from the archive at their recorded basis: same hash or not, per "
         "parity run.", _parity(data)),
        ("Apply failures by reason", "Records the consumers ledgered instead of applying (none is dropped "
         "silently).", _failures(data)),
        (f"Dataset {data.dataset_id or ''}: offline vs served",
         "Each feature's distribution in the dataset next to the same feature in snapshots served for the "
         "same run (density; nulls left out).", _distributions(data)),
    ]
    scope = f"run {data.run_id}" if data.run_id else "all runs"
    body = "".join(f"<section><h2>{html.escape(title)}</h2><p>{html.escape(about)}</p>{content}</section>"
                   for title, about, content in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>featureplane report"
            f"</title><style>{STYLE}</style></head><body><h1>featureplane report</h1>"
            f"<p class=\"meta\">profile {html.escape(data.profile)}, {html.escape(scope)}, generated "
            f"{data.generated_at}</p>{body}<script>{CHECK}</script></body></html>")


def write_report(app: object, out: Path | None = None, *, dataset: str | None = None,
                 run_id: str | None = None) -> tuple[Path, ReportData, int]:
    """Gather, draw and write the page (default FP_HOME/reports/report-<time>.html); returns where,
    what it shows and its size in bytes."""
    data = gather(app, dataset=dataset, run_id=run_id)  # type: ignore[arg-type]
    where = out or app.settings.home / "reports" / f"report-{data.generated_at}.html"  # type: ignore[attr-defined]
    page = render(data).encode()
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(page)
    except OSError as exc:
        raise TerminalError("OUTPUT_UNWRITABLE", f"{str(where)!r} cannot be written ({exc.strerror})") from None
    return where, data, len(page)

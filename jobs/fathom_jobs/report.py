"""The eval stage's report: report.md (tables) and a self-contained report.html (tables, inline
CSS, plots as base64 PNG).

Input is results.json's shape, `{model: {benchmark: summarize(...) entry}}` (fathom_jobs.metrics),
plus optional per-stage costs `{stage: {gpuHours, costUSD}}`. matplotlib is imported only to draw,
through its Agg canvas (no pyplot, no global backend switch). The output carries no timestamp and
PNGs are saved without software metadata, so two shards aggregating the same parts write the same
bytes.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Results = Mapping[str, Mapping[str, Mapping[str, Any]]]
Costs = Mapping[str, Mapping[str, float]]

# The seeds' model cards, for comparison (pass@1 / cons@64, percent).
PUBLISHED = {
    "Fathom-R1-14B": {"aime25": (52.71, 76.7), "hmmt25": (35.26, 56.7)},
    "DeepSeek-R1-Distill-Qwen-14B": {"aime25": (45.5, 63.33), "hmmt25": (30.0, 50.0)},
}
NO_COSTS_NOTE = ("Costs are not included: the operator passed none to this stage "
                 "(`fathom report NAME` prints them from the recipe's status).")


def benchmarks_of(results: Results) -> list[str]:
    seen: list[str] = []
    for per_model in results.values():
        seen += [b for b in per_model if b not in seen]
    return seen


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def accuracy_cell(entry: Mapping[str, Any] | None, limo: bool = False) -> str:
    if not entry:
        return "-"
    source = entry.get("limo", {}) if limo else entry
    return f"{_num(source.get('pass@1'))} / {_num(source.get('cons@k'))}"


def table_data(results: Results, costs: Costs | None) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows) of every table, shared by the Markdown and HTML renderings."""
    benchmarks = benchmarks_of(results)
    ks = sorted({int(e["k"]) for m in results.values() for e in m.values() if e.get("k")})
    cons = f"cons@{ks[0]}" if len(ks) == 1 else "cons@k"
    tables = [
        (f"Accuracy (pass@1 / {cons}, %)", "Strict grading; the vote groups equivalent answers.",
         ["model", *benchmarks], [[m, *(accuracy_cell(results[m].get(b)) for b in benchmarks)] for m in results]),
        (f"LIMO-compatible accuracy (pass@1 / {cons}, %)",
         "The seeds' grading: LIMO extraction and math_equal; the vote is over raw extracted strings.",
         ["model", *benchmarks],
         [[m, *(accuracy_cell(results[m].get(b), limo=True) for b in benchmarks)] for m in results]),
        ("Average response length (tokens)", "mean (median) tokens per response; capped = share that hit the token cap.",
         ["model", *benchmarks],
         [[m, *(_length_cell(results[m].get(b)) for b in benchmarks)] for m in results]),
    ]
    curve_ks = sorted({int(k) for m in results.values() for e in m.values() for k in e.get("pass@k", {})})
    tables.append(("pass@k (%)", "Unbiased estimator over the k samples per problem.",
                   ["model", "benchmark", *(f"k={k}" for k in curve_ks)],
                   [[m, b, *(_num(e.get("pass@k", {}).get(str(k))) for k in curve_ks)]
                    for m, per in results.items() for b, e in per.items()]))
    published = [[m, *(f"{p[0]:.2f} / {p[1]:.2f}" if (p := scores.get(b)) else "-" for b in benchmarks)]
                 for m, scores in PUBLISHED.items() if any(b in scores for b in benchmarks)]
    if published:
        tables.append(("Published (seeds' model cards, pass@1 / cons@64, %)",
                       "For comparison; computed with the LIMO-compatible grading.", ["model", *benchmarks], published))
    if costs:
        rows = [[stage, _num(c.get("gpuHours")), usd_text(c.get("costUSD"))] for stage, c in costs.items()]
        rows.append(["total", _num(sum(c.get("gpuHours", 0.0) for c in costs.values())),
                     usd_text(sum(c.get("costUSD", 0.0) for c in costs.values()))])
        tables.append(("Cost per stage", "Paid GPU/CPU time, failed attempts included.", ["stage", "GPU-hours", "USD"], rows))
    return tables


def usd_text(value: Any) -> str:
    """Dollars to the cent, or to four places below a cent (CPU stages cost fractions of one)."""
    if not isinstance(value, (int, float)):
        return "-"
    return _num(value, 2 if value == 0 or abs(value) >= 0.01 else 4)


def _length_cell(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "-"
    return (f"{_num(entry.get('meanTokens'), 0)} ({_num(entry.get('medianTokens'), 0)}), "
            f"capped {_num(entry.get('cappedPercent'), 1)}%")


def _settings_lines(meta: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in meta.get("settings", {}).items():
        lines.append(f"{key}: {value}")
    for name, uri in meta.get("models", {}).items():
        lines.append(f"model {name}: {uri}")
    for name, ref in meta.get("benchmarks", {}).items():
        lines.append(f"benchmark {name}: {ref}")
    return lines


def render_markdown(results: Results, *, costs: Costs | None = None, meta: Mapping[str, Any] | None = None) -> str:
    meta = meta or {}
    out = [f"# {meta.get('title', 'Evaluation report')}", ""]
    for title, note, header, rows in table_data(results, costs):
        out += [f"## {title}", "", note, "", "| " + " | ".join(header) + " |",
                "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        out.append("")
    if not costs:
        out += [NO_COSTS_NOTE, ""]
    settings = _settings_lines(meta)
    if settings:
        out += ["## Settings", "", *(f"- {line}" for line in settings), ""]
    out += ["Plots (pass@1 against response length, pass@k curves, cost per stage) are in report.html.", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float, **margins: float) -> Any:  # a matplotlib Figure (imported lazily)
    from matplotlib.figure import Figure

    # Fixed margins: the layout engines cost a second or more per figure on a busy CPU.
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(**{"left": 0.1, "right": 0.97, "bottom": 0.12, "top": 0.92, **margins})
    return figure


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def plot_accuracy_vs_length(results: Results) -> bytes:
    """pass@1 against mean response tokens: colour = model, marker = benchmark."""
    from matplotlib.lines import Line2D

    figure = _figure(8.5, 4.5, right=0.74)  # the legends go right of the axes, never over a point
    axes = figure.add_subplot()
    markers = "osD^vP*X"
    benchmarks = benchmarks_of(results)
    for index, per_benchmark in enumerate(results.values()):
        for benchmark, entry in per_benchmark.items():
            axes.scatter(entry.get("meanTokens", 0), entry.get("pass@1", 0), color=f"C{index % 10}", s=60,
                         marker=markers[benchmarks.index(benchmark) % len(markers)])
    axes.set_xlabel("mean response tokens")
    axes.set_ylabel("pass@1 (%)")
    axes.set_title("Accuracy against response length")
    axes.grid(alpha=0.3)
    # Two small legends instead of one entry per point.
    model_legend = axes.legend(handles=[Line2D([], [], color=f"C{i % 10}", marker="o", linestyle="", label=m)
                                        for i, m in enumerate(results)], fontsize=7, loc="upper left",
                               bbox_to_anchor=(1.02, 1.0), title="model")
    axes.add_artist(model_legend)
    axes.legend(handles=[Line2D([], [], color="0.4", marker=markers[i % len(markers)], linestyle="", label=b)
                         for i, b in enumerate(benchmarks)], fontsize=7, loc="lower left", bbox_to_anchor=(1.02, 0.0),
                title="benchmark")
    return _png(figure)


def plot_pass_at_k(results: Results) -> bytes:
    """pass@k curves, one panel per benchmark, one line per model."""
    benchmarks = benchmarks_of(results)
    columns = min(3, len(benchmarks))
    rows = -(-len(benchmarks) // columns)
    figure = _figure(4.2 * columns, 3.4 * rows, left=0.08 if columns > 1 else 0.14, bottom=0.15 / rows,
                     top=1 - 0.1 / rows, wspace=0.3, hspace=0.45)
    for position, benchmark in enumerate(benchmarks, 1):
        axes = figure.add_subplot(rows, columns, position)
        all_ks: set[int] = set()
        for index, (model, per_benchmark) in enumerate(results.items()):
            curve = per_benchmark.get(benchmark, {}).get("pass@k", {})
            ks = sorted(int(k) for k in curve)
            all_ks.update(ks)
            if ks:
                axes.plot(ks, [curve[str(k)] for k in ks], marker="o", color=f"C{index % 10}", label=model)
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
        axes.set_xlabel("k")
        axes.set_ylabel("pass@k (%)")
        axes.set_title(benchmark)
        axes.grid(alpha=0.3)
        if position == 1:  # the models are the same in every panel
            axes.legend(fontsize=7, loc="upper left")
    return _png(figure)


def plot_costs(costs: Costs) -> bytes:
    """USD per stage as bars, labelled with GPU-hours."""
    figure = _figure(max(5.0, 0.9 * len(costs) + 2), 4, left=0.12, bottom=0.22)
    axes = figure.add_subplot()
    stages = list(costs)
    usd = [float(costs[s].get("costUSD", 0.0)) for s in stages]
    bars = axes.bar(range(len(stages)), usd, color="C0")
    # GPU-hours where a stage used GPUs; a CPU stage's dollars (it has no GPU-hours to show).
    axes.bar_label(bars, fontsize=8, labels=[
        f"{gpu:.1f} h" if (gpu := float(costs[s].get("gpuHours", 0.0))) else f"${usd[i]:.4f}" for i, s in enumerate(stages)])
    axes.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
    axes.set_ylabel("USD")
    axes.margins(y=0.12)  # room for the labels above the tallest bar
    axes.set_title("Cost per stage (labels: GPU-hours, or USD on CPUs)")
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def plots(results: Results, costs: Costs | None = None) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG bytes)."""
    drawn = {
        "accuracy-vs-length": ("pass@1 against mean response tokens", plot_accuracy_vs_length(results)),
        "pass-at-k": ("pass@k curves", plot_pass_at_k(results)),
    }
    if costs:
        drawn["cost-per-stage"] = ("Cost per stage", plot_costs(costs))
    return drawn


# -------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1b1f24;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.35rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}
p.note{color:#57606a;font-size:.85rem;margin:.2rem 0}
figure{margin:1rem 0}figcaption{color:#57606a;font-size:.85rem}img{max-width:100%}
"""


def render_html(results: Results, *, costs: Costs | None = None, meta: Mapping[str, Any] | None = None,
                images: Mapping[str, tuple[str, bytes]] | None = None) -> str:
    meta = meta or {}
    esc = html.escape
    title = esc(str(meta.get("title", "Evaluation report")))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{title}</h1>"]
    for heading, note, header, rows in table_data(results, costs):
        out += [f"<h2>{esc(heading)}</h2>", f'<p class="note">{esc(note)}</p>', "<table>",
                "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
        out += ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows]
        out.append("</table>")
    if not costs:
        out.append(f'<p class="note">{esc(NO_COSTS_NOTE)}</p>')
    images = images if images is not None else plots(results, costs)
    if images:
        out.append("<h2>Plots</h2>")
    for name, (caption, png) in images.items():
        data = base64.b64encode(png).decode("ascii")
        out.append(f'<figure id="{esc(name)}"><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{esc(caption)}</figcaption></figure>")
    settings = _settings_lines(meta)
    if settings:
        out += ["<h2>Settings</h2>", "<ul>", *(f"<li>{esc(line)}</li>" for line in settings), "</ul>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(directory: str | Path, results: Results, *, costs: Costs | None = None,
                 meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write report.md and report.html into directory; returns {"md": path, "html": path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / "report.md"
    page = directory / "report.html"
    markdown.write_text(render_markdown(results, costs=costs, meta=meta), encoding="utf-8")
    page.write_text(render_html(results, costs=costs, meta=meta), encoding="utf-8")
    return {"md": markdown, "html": page}

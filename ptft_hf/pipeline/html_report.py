"""The pipeline report as one self-contained page (`report.html` beside `report.md`): the tree of
stages drawn (general model → specialists → controls) with each node's cost, parameters updated and
main metric, the loss curves, the seed's table and the evaluation matrix's heatmap. Every figure is
inline SVG and there is no script: the page opens from disk and asks nothing of the network."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any

from ptft_hf.training.report import draw_losses, loss_axes_style, read_log

REPORT_HTML = "report.html"
_NODE_W, _NODE_H, _GAP_X, _GAP_Y, _MARGIN = 270, 92, 70, 22, 16
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; text-align: left; } .tree text { font-size: 12px; } .tree .name { font-weight: bold; font-size: 13px; }
.figure svg { max-width: 100%; height: auto; }
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _parent(name: str, metrics: dict[str, Any], configs: dict[str, Any]) -> str | None:
    init_from = getattr(configs.get(name), "init_from", None)
    return init_from or (metrics.get("lineage") or {}).get("init_from_stage")


def tree_layout(stages: dict[str, dict[str, Any]], configs: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(column, row) of each stage: a stage one column right of the stage it starts from; the
    controls (random weights) in a last column, each on the row after the stage it controls (same
    objective and data), rows in depth-first order of the tree."""
    controls = [n for n, m in stages.items() if m.get("random_init")]
    children: dict[str | None, list[str]] = {}
    for name, m in stages.items():
        if name not in controls:
            parent = _parent(name, m, configs)
            children.setdefault(parent if parent in stages else None, []).append(name)
    order: list[tuple[str, int]] = []

    def visit(name: str, depth: int) -> None:
        order.append((name, depth))
        for child in children.get(name, []):
            visit(child, depth + 1)

    for root in children.get(None, []):
        visit(root, 0)
    last_column = max((d for _, d in order), default=-1) + 1
    placed: dict[str, tuple[int, int]] = {}
    row = -1
    for name, depth in order:
        row += 1
        placed[name] = (depth, row)
        for control in controls:
            m, c = stages[name], stages[control]
            if control not in placed and (c["objective"], c["data"]) == (m["objective"], m["data"]) and m.get("base_model"):
                row += (last_column, row) in placed.values()  # a second control of the same stage: the next row
                placed[control] = (last_column, row)
    row += 1
    for control in controls:
        if control not in placed:
            placed[control] = (last_column, row)
            row += 1
    return placed


def _node_lines(name: str, m: dict[str, Any], purpose: str, quality: str) -> list[str]:
    minutes = f"{m['wall_time_s'] / 60:.1f} min" if m.get("wall_time_s") is not None else "–"
    flops = f", {m['train_flops_estimate']:.2g} FLOPs" if m.get("train_flops_estimate") else ""
    updated = (f"{m['trainable_percent']:.2f}% of {m['parameters']:,} parameters updated"
               if "trainable_percent" in m and "parameters" in m else "")
    return [name, f"{purpose} · {m.get('data', '')}", f"cost: {minutes}{flops}", updated, quality]


def tree_svg(stages: dict[str, dict[str, Any]], configs: dict[str, Any]) -> str:
    """The tree of stages as inline SVG: a box per stage, a line from the stage it starts from
    (dashed for a control: its architecture only)."""
    from ptft_hf.pipeline.report import quality_summary, stage_purpose

    placed = tree_layout(stages, configs)
    columns = max(c for c, _ in placed.values()) + 1
    rows = max(r for _, r in placed.values()) + 1
    width = 2 * _MARGIN + columns * _NODE_W + (columns - 1) * _GAP_X
    height = 2 * _MARGIN + rows * _NODE_H + (rows - 1) * _GAP_Y

    def corner(name: str) -> tuple[int, int]:
        column, row = placed[name]
        return _MARGIN + column * (_NODE_W + _GAP_X), _MARGIN + row * (_NODE_H + _GAP_Y)

    parts = [f'<svg class="tree" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="the tree of stages">']
    for name, m in stages.items():
        parent = _parent(name, m, configs)
        if parent in placed:
            (px, py), (x, y) = corner(parent), corner(name)
            dash = ' stroke-dasharray="6 4"' if m.get("random_init") else ""
            parts.append(f'<path d="M{px + _NODE_W} {py + _NODE_H / 2} C{px + _NODE_W + _GAP_X / 2} {py + _NODE_H / 2} '
                         f'{x - _GAP_X / 2} {y + _NODE_H / 2} {x} {y + _NODE_H / 2}" fill="none" stroke="#777"{dash}/>')
    for name, m in stages.items():
        x, y = corner(name)
        fill = "#f4f4f4" if m.get("random_init") else "#e8f1fb" if not m.get("base_model") else "#eaf6ea"
        parts.append(f'<g data-stage="{_esc(name)}"><rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="6" '
                     f'fill="{fill}" stroke="#555"/>')
        for i, line in enumerate(_node_lines(name, m, stage_purpose(m), quality_summary(m).split("; ")[0])):
            css = ' class="name"' if i == 0 else ""
            parts.append(f'<text x="{x + 8}" y="{y + 17 + 17 * i}"{css}>{_esc(line[:44])}</text>')
        parts.append("</g>")
    return "\n".join(parts + ["</svg>"])


def figure_svg(fig: Any) -> str:
    """A matplotlib figure as inline SVG: text drawn as paths (no font to fetch), the XML prologue
    and DOCTYPE dropped."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def losses_svg(run_dir: Path, stages: dict[str, dict[str, Any]]) -> str:
    """Each stage's loss curves in a panel of its own (steps count from each stage's start)."""
    from matplotlib.figure import Figure

    names = [n for n in stages if (run_dir / n / "train_log.jsonl").exists()]
    if not names:
        return "<p>No training log.</p>"
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(4.6 * columns, 3.3 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        draw_losses(ax, read_log(run_dir / name / "train_log.jsonl"), resumed_at=stages[name].get("resumed_from_step") or None)
        loss_axes_style(ax, name)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return figure_svg(fig)


def _seed_table_html(stages: dict[str, dict[str, Any]], configs: dict[str, Any]) -> str:
    from ptft_hf.pipeline.report import _seed_table_rows

    names = list(stages)
    lines = ["<table><tr><th></th>" + "".join(f"<th>{_esc(n)}</th>" for n in names) + "</tr>"]
    for label, cell in _seed_table_rows(stages, configs):
        lines.append(f"<tr><th>{_markdown_code(label)}</th>" + "".join(f"<td>{_markdown_code(cell(n, stages[n]))}</td>" for n in names)
                     + "</tr>")
    return "\n".join(lines + ["</table>"])


def _markdown_code(text: str) -> str:
    """Escaped text with the report's `code` and **bold** spans kept."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def heatmap_svg(matrix: dict[str, Any]) -> str:
    from ptft_hf.evaluation.matrix import heatmap_figure

    return figure_svg(heatmap_figure(matrix))


def write_html_report(run_dir: Path, summary: dict[str, Any], configs: dict[str, Any], timing: str,
                      matrix: dict[str, Any] | None = None) -> Path:
    """`report.html`: the tree, the loss curves, the seed's table and, with a matrix, its heatmap."""
    order = summary.get("stage_order") or list(summary["stages"])
    stages = {name: summary["stages"][name] for name in order}
    sections = [f"<h1>Pipeline report: {_esc(run_dir.name)}</h1>", f"<p>{_esc(timing)}</p>",
                "<h2>The tree</h2>", f'<div class="figure">{tree_svg(stages, configs)}</div>',
                "<h2>Loss curves</h2>", f'<div class="figure">{losses_svg(run_dir, stages)}</div>',
                "<h2>Pretraining vs fine-tuning (the seed's table)</h2>", _seed_table_html(stages, configs)]
    if matrix:
        sections += ["<h2>Evaluation matrix</h2>", f'<div class="figure">{heatmap_svg(matrix)}</div>']
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Pipeline report: {_esc(run_dir.name)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    path = run_dir / REPORT_HTML
    path.write_text(page, encoding="utf-8")
    return path


def write_reports(run_dir: Path, summary: dict[str, Any], configs: dict[str, Any], matrix: dict[str, Any] | None = None) -> Path:
    """The pipeline's report.md and report.html; the path of report.md."""
    from ptft_hf.pipeline.report import timing_line, write_pipeline_report

    path = write_pipeline_report(run_dir, summary, configs, matrix=matrix)
    write_html_report(run_dir, summary, configs, timing_line(summary), matrix)
    return path

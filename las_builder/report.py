"""``report.html``: one self-contained page of what :mod:`las_builder.inspect` rendered.

The page opens offline from the file system: images are referenced by paths relative to the
report (``panels/...``, ``world.png``, ``stats/...``), the style sheet is inline, and there is
no script, web font or remote URL. Legends are HTML lists whose swatches carry the colours
(``data-legend``, ``data-value`` and ``data-color`` attributes make them machine-checkable).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from las_builder.inspect import Confusion, InspectResult, Legend

__all__ = ["render_report", "write_report"]

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table.summary { border-collapse: collapse; margin: 0.5em 0; }
table.summary td, table.summary th { border: 1px solid #ccc; padding: 0.2em 0.6em;
  font-size: 0.85em; text-align: right; }
table.summary th { background: #f2f2f2; } table.summary td.name { text-align: left; }
div.scroll { overflow-x: auto; }
table.quicklooks { border-collapse: collapse; }
table.quicklooks th { font-size: 0.7em; font-weight: normal; padding: 0.2em; max-width: 9em; }
table.quicklooks td { padding: 2px; vertical-align: top; }
table.quicklooks td.facts { font-size: 0.7em; white-space: nowrap; }
table.quicklooks img { width: 128px; height: 128px; image-rendering: pixelated;
  display: block; border: 1px solid #ddd; }
div.empty { width: 128px; height: 128px; background: #f4f4f4; color: #888; font-size: 0.7em;
  display: flex; align-items: center; justify-content: center; border: 1px solid #ddd; }
div.legends { display: flex; flex-wrap: wrap; gap: 1.2em; }
ul.legend { list-style: none; padding: 0; margin: 0.2em 0; font-size: 0.75em; }
ul.legend li { margin: 1px 0; }
span.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
  border: 1px solid #555; margin-right: 0.4em; }
img.figure { max-width: 100%; border: 1px solid #eee; }
p.note { color: #555; font-size: 0.85em; }
p.warning { color: #8a4b00; background: #fff4e0; border: 1px solid #f0c080; padding: 0.3em 0.6em; }
table.confusion th.name { text-align: left; white-space: nowrap; }
details { margin: 0.3em 0; font-size: 0.85em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _legend_html(legend: Legend, used: set[int] | None = None) -> str:
    items = []
    for entry in legend.entries:
        mark = " *" if used and entry.value in used else ""
        items.append(
            f'<li data-value="{entry.value}" data-color="{_e(entry.color)}">'
            f'<span class="swatch" style="background:{_e(entry.color)}"></span>'
            f"{entry.value} {_e(entry.name)}{_e(mark)}</li>"
        )
    return (
        f'<div><b>{_e(legend.title)}</b><ul class="legend" data-legend="{_e(legend.key)}">'
        + "".join(items)
        + "</ul></div>"
    )


def _summary_html(summary: dict[str, Any]) -> str:
    from las_builder.inspect import notes

    rows = [f"<p class='warning'>{_e(note)}</p>" for note in notes(summary)]
    rows += [
        "<table class='summary'><tr><th>samples</th><th>ok</th><th>skipped</th><th>failed</th>"
        "<th>mean sample agreement</th></tr>",
        f"<tr><td>{summary['samples']}</td><td>{summary['ok']}</td><td>{summary['skipped']}</td>"
        f"<td>{summary['failed']}</td><td>{_pct(summary.get('mean_sample_agreement'), 3)}</td>"
        "</tr></table>",
    ]
    if summary["reasons"]:
        rows.append(
            "<table class='summary'><tr><th>status</th><th>skip / fail reason</th>"
            "<th>samples</th></tr>"
        )
        for r in summary["reasons"]:
            rows.append(
                f"<tr><td class='name'>{_e(r.get('status', ''))}</td>"
                f"<td class='name'>{_e(r['reason'])}</td><td>{r['samples']}</td></tr>"
            )
        rows.append("</table>")
    else:
        rows.append("<p class='note'>No sample was skipped or failed.</p>")
    rows.append(
        "<table class='summary' id='products'><tr><th>product</th><th>classified %</th>"
        "<th>nodata %</th><th>ignore %</th><th>agreement with consensus</th>"
        "<th>mean pairwise agreement</th></tr>"
    )
    for p in summary["products"]:
        rows.append(
            f"<tr><td class='name'>{_e(p['product'])}</td><td>{_pct(p['classified_pct'])}</td>"
            f"<td>{_pct(p['nodata_pct'])}</td><td>{_pct(p['ignore_pct'])}</td>"
            f"<td>{_pct(p['agreement_with_consensus'], 3)}</td>"
            f"<td>{_pct(p['mean_pairwise_agreement'], 3)}</td></tr>"
        )
    rows.append("</table>")
    rows.append(
        "<p class='note'>Pixels of ok samples. Agreement with consensus: share of the pixels "
        "where both the product and the consensus give a LAS class on which they agree. Mean "
        "pairwise agreement: mean over the other products of the share of commonly classified "
        "pixels with the same LAS class.</p>"
    )
    return "\n".join(rows)


def _quicklooks_html(result: InspectResult) -> str:
    columns: list[tuple[str, str]] = []
    for view in result.samples:
        for p in view.panels:
            if (p.key, p.title) not in columns:
                columns.append((p.key, p.title))
    head = "<tr><th>sample</th>" + "".join(f"<th>{_e(t)}</th>" for _, t in columns) + "</tr>"
    body = []
    for view in result.samples:
        by_key = {p.key: p for p in view.panels}
        facts = "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in view.facts.items())
        cells = [
            f"<td class='facts'><b>{_e(view.sample_id)}</b><br>#{view.zarr_index}<br>{facts}</td>"
        ]
        for key, title in columns:
            panel = by_key.get(key)
            if panel is None or panel.path is None:
                note = panel.note if panel is not None else "-"
                cells.append(f"<td><div class='empty'>{_e(note)}</div></td>")
            else:
                legend = f' data-legend="{_e(panel.legend)}"' if panel.legend else ""
                cells.append(
                    f'<td><img src="{_e(panel.path)}" alt="{_e(view.sample_id)} {_e(title)}" '
                    f'title="{_e(title)}" data-panel="{_e(key)}"{legend}></td>'
                )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<div class='scroll'><table class='quicklooks'>" + head + "".join(body) + "</table></div>"
    )


def _confusion_html(confusion: Confusion, legend: Legend) -> str:
    classes = [e for e in legend.entries if not e.special]
    m = confusion.matrix
    keep = [i for i in range(len(classes)) if m[i].any() or m[:, i].any()]
    agreement = "n/a" if confusion.agreement is None else f"{100 * confusion.agreement:.1f}%"
    head = "".join(f"<th title='{_e(classes[j].name)}'>{classes[j].value}</th>" for j in keep)
    body = []
    for i in keep:
        total = int(m[i].sum())
        cells = []
        for j in keep:
            share = m[i, j] / total if total else 0.0
            shade = int(255 - 155 * share)
            style = f"background:rgb({shade},{shade},255)" if m[i, j] else ""
            text = f"{100 * share:.0f}" if m[i, j] else "."
            cells.append(f"<td style='{style}' title='{int(m[i, j])} px'>{text}</td>")
        body.append(
            f"<tr><th class='name'>{classes[i].value} {_e(classes[i].name)}</th>"
            + "".join(cells)
            + "</tr>"
        )
    return (
        f"<details><summary>{_e(confusion.rows)} (rows) vs {_e(confusion.columns)} (columns): "
        f"agreement {agreement}, {int(m.sum())} px</summary>"
        f"<table class='summary confusion'><tr><th></th>{head}</tr>{''.join(body)}</table>"
        "</details>"
    )


def render_report(result: InspectResult) -> str:
    """The HTML of the report.

    Args:
        result: What :func:`las_builder.inspect.inspect_dataset` rendered.

    Returns:
        A complete HTML document referencing only files under ``result.out``.

    """
    out = result.out

    def rel(path: Path) -> str:
        return _e(path.relative_to(out).as_posix())

    used = result.used
    summary = result.summary
    legends = "".join(_legend_html(legend, used.get(key)) for key, legend in result.legends.items())
    figures = result.figures
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>LAS inspect: {_e(summary.get('dataset', ''))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>LAS dataset <code>{_e(summary.get('dataset', ''))}</code></h1>",
        "<h2 id='summary'>Summary</h2>",
        _summary_html(summary),
        f"<h2 id='quicklooks'>Quicklooks ({len(result.samples)} ok samples)</h2>",
        "<p class='note'>Sentinel-2 B04/B03/B02 with one 2-98 % stretch; Sentinel-1 red VV, "
        "green VH, blue VV/VH (dB), each stretched 2-98 %; NAIP R/G/B as recorded. Label maps "
        "are drawn pixel for pixel in their legend colours: native maps in each product's own "
        "colours, LAS maps and the consensus in the LAS colours (0 nodata, 255 ignore).</p>",
        _quicklooks_html(result),
        "<h2 id='legends'>Legends</h2>",
        "<p class='note'>* present in the quicklooks above.</p>",
        f"<div class='legends'>{legends}</div>",
    ]
    if "quicklooks" in figures:
        parts += [
            "<h2 id='grid'>Quicklook grid</h2>",
            f'<img class="figure" src="{rel(figures["quicklooks"])}" alt="quicklook grid">',
        ]
    parts.append("<h2 id='map'>Sample locations</h2>")
    for key in ("world", "regions"):
        if key in figures:
            parts.append(f'<img class="figure" src="{rel(figures[key])}" alt="{key} map"><br>')
    parts.append("<h2 id='histograms'>Class histograms</h2>")
    for key in ("histograms_las", "histograms_native"):
        if key in figures:
            parts.append(f'<img class="figure" src="{rel(figures[key])}" alt="{key}"><br>')
    parts.append("<h2 id='confusion'>Confusion matrices (LAS classes)</h2>")
    if result.confusion:
        parts.append(
            "<p class='note'>Pixels of ok samples that both products classify (nodata and "
            "ignore excluded); rows: first product, columns: second; cells: % of the row, the "
            "count on hover.</p>"
        )
        if "confusion" in figures:
            parts.append(f'<img class="figure" src="{rel(figures["confusion"])}" alt="confusion">')
        parts += [_confusion_html(c, result.legends["las"]) for c in result.confusion]
    else:
        parts.append("<p class='note'>Fewer than two label products: no matrix.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(result: InspectResult) -> Path:
    """Write ``report.html`` into ``result.out``.

    Args:
        result: What :func:`las_builder.inspect.inspect_dataset` rendered.

    Returns:
        The report path.

    """
    result.report.write_text(render_report(result), encoding="utf-8")
    return result.report

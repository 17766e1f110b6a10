"""The evaluation as one self-contained HTML page: the report's tables as HTML tables, the
figures embedded (PNG data URIs), and room for a caller's own sections (the demo's examples).

The tables come from `songsight.eval.report`'s Markdown, converted here for exactly the
Markdown it writes (headings, paragraphs, ``- `` items, pipe tables, ``**bold**``,
```code```), so RESULTS.md and the page never disagree. The page loads nothing from the
network and runs no script.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

FIGURE_CAPTIONS = {
    "map_by_method.png": "Audio-to-image mAP of each method; bars: 95% bootstrap interval.",
    "per_species_ap.png": "Audio-to-image average precision per species.",
    "example_queries.png": "Example queries: top images, the correct species outlined green.",
}

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:14px}
th,td{border:1px solid #ddd;padding:.3em .7em}th{background:#f3f5f8}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555}code{background:#f3f3f3;padding:0 .2em}
.card{border:1px solid #ddd;border-radius:8px;padding:1em;margin:1em 0}
.hits{display:flex;gap:.6em;flex-wrap:wrap}.hits figure{margin:0;text-align:center;font-size:12px}
.hits img{width:96px;height:96px;image-rendering:pixelated;border:4px solid #ccc;border-radius:4px}
.hits .ok img{border-color:#2a9d3a}.hits .no img{border-color:#d33}.spec{display:block}"""


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: list[str]) -> str:
    """A pipe table (header, alignment row, body) as an HTML table; ``---:`` columns numeric."""
    head, rule, body = _cells(lines[0]), _cells(lines[1]), [_cells(ln) for ln in lines[2:]]
    num = [r.endswith(":") for r in rule] + [False] * len(head)
    th = "".join(
        f'<th scope="col"{" class=num" if num[i] else ""}>{_inline(c)}</th>'
        for i, c in enumerate(head)
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if num[i] else ''}>{_inline(c)}</td>" for i, c in enumerate(row)
        )
        + "</tr>"
        for row in body
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{rows}</tbody></table>"


def markdown_to_html(markdown: str, heading_offset: int = 0) -> str:
    """The Markdown `songsight.eval.report` writes, as HTML (escaped; nothing else parsed).

    ``heading_offset`` demotes headings (1: ``#`` becomes ``<h2>``) for a page that has its own."""
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if table:
            out.append(_table(table) if len(table) >= 2 else f"<p>{_inline(table[0])}</p>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            if not table:
                flush()
            table.append(line)
            continue
        if table or not line.strip():
            flush()
        if line.startswith("#"):
            flush()
            hashes = len(line) - len(line.lstrip("#"))
            level = min(hashes + heading_offset, 6)
            out.append(f"<h{level}>{_inline(line[hashes:].strip())}</h{level}>")
        elif line.startswith("- "):
            if para:
                flush()
            items.append(line[2:])
        elif line.strip():
            para.append(line.strip())
    flush()
    return "\n".join(out)


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figures_html(paths: Sequence[str | Path]) -> str:
    """``<figure>`` elements with each PNG embedded, captioned by `FIGURE_CAPTIONS`."""
    parts = []
    for path in map(Path, paths):
        if not path.is_file():
            continue
        caption = FIGURE_CAPTIONS.get(path.name, path.stem.replace("_", " "))
        parts.append(
            f'<figure><img src="{png_data_uri(path)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def selection_html(results: dict) -> str:
    """The audio template candidates' zero-shot top-1 on the train split, when there were any."""
    sel = results.get("template_selection")
    if not sel:
        return ""
    from songsight.eval.report_tables import pct

    rows = "".join(
        f"<tr><td>{'✔' if c['spec'] == sel['chosen'] else ''}</td>"
        f"<td><code>{html.escape(str(c['spec']))}</code></td>"
        f"<td class=num>{len(c['templates'])}</td><td class=num>{pct(c['top1'])}</td></tr>"
        for c in sel["candidates"]
    )
    return (
        "<h2>Audio prompt templates</h2>"
        f"<p>BioLingual's zero-shot top-1 on {sel['n']} train recordings for each candidate "
        f"(prompt format <code>{html.escape(sel['prompt_format'])}</code>); the chosen one "
        "built the audio species text.</p><table><thead><tr><th>Chosen</th><th>Templates</th>"
        "<th class=num>Count</th><th class=num>Top-1</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def render_page(title: str, body: str) -> str:
    """A complete, self-contained HTML document around ``body``."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def render_results_html(
    results: dict, figures: Sequence[str | Path] = (), title: str = "songsight evaluation"
) -> str:
    """RESULTS.html: the report's tables, the template choice, then the figures embedded."""
    from songsight.eval.report import render_markdown

    body = markdown_to_html(render_markdown(results)) + selection_html(results)
    shown = figures_html(figures)
    if shown:
        body += "\n<h2>Figures</h2>\n" + shown
    return render_page(title, body)


def merge_reports_html(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> str:
    """`songsight.eval.report.merge_reports` as a self-contained HTML page."""
    from songsight.eval.report import merge_reports

    return render_page(
        "songsight evaluation: merged runs", markdown_to_html(merge_reports(paths, names))
    )

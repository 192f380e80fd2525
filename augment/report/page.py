"""A human-readable report page, written once as Markdown and once as a standalone HTML file.

A `Page` is a list of blocks (headings, paragraphs, bullet lists, tables, images); `to_markdown` and `to_html`
render the same blocks, so the two files always say the same thing. Images are referenced by relative path.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

Cell = Any


def pct(value: float | None, signed: bool = False) -> str:
    """A 0..1 fraction as percent with two decimals ('-' for None/NaN); `signed` adds '+' to gains."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def mean_spread(values: Sequence[float | None]) -> str:
    """`mean ± s.d.` of fractions in percent over the values that exist (s.d. with n-1; '-' when none exist)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return f"{mean * 100:.2f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean * 100:.2f} ± {sd * 100:.2f}"


@dataclass
class Page:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> "Page":
        self.blocks.append(("heading", text))
        return self

    def paragraph(self, text: str) -> "Page":
        self.blocks.append(("paragraph", text))
        return self

    def bullets(self, items: Sequence[str]) -> "Page":
        self.blocks.append(("bullets", list(items)))
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Cell]], bold_rows: Sequence[int] = ()) -> "Page":
        """A table; rows whose index is in `bold_rows` are emphasised (e.g. the targeted classes)."""
        self.blocks.append(("table", (list(header), [list(r) for r in rows], set(bold_rows))))
        return self

    def image(self, path: str, alt: str) -> "Page":
        self.blocks.append(("image", (path, alt)))
        return self

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "heading":
                out += [f"## {payload}", ""]
            elif kind == "paragraph":
                out += [payload, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in payload] + [""]
            elif kind == "table":
                header, rows, bold = payload
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
                for i, row in enumerate(rows):
                    cells = [_md_cell(c) for c in row]
                    if i in bold:
                        cells = [f"**{c}**" if c else c for c in cells]
                    out.append("| " + " | ".join(cells) + " |")
                out.append("")
            elif kind == "image":
                path, alt = payload
                out += [f"![{alt}]({path})", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        out = [
            "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
            "td{text-align:right}td:first-child{text-align:left}img{max-width:100%}"
            "code{background:#f4f4f4}</style>",
            "</head><body>", f"<h1>{e(self.title)}</h1>",
        ]
        for kind, payload in self.blocks:
            if kind == "heading":
                out.append(f"<h2>{e(payload)}</h2>")
            elif kind == "paragraph":
                out.append(f"<p>{_inline_html(payload)}</p>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in payload) + "</ul>")
            elif kind == "table":
                header, rows, bold = payload
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
                for i, row in enumerate(rows):
                    style = " style='font-weight:bold'" if i in bold else ""
                    out.append(f"<tr{style}>" + "".join(f"<td>{_inline_html(_text(c))}</td>" for c in row)
                               + "</tr>")
                out.append("</table>")
            elif kind == "image":
                path, alt = payload
                out.append(f"<p><img src='{e(path)}' alt='{e(alt)}'></p>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _text(value: Cell) -> str:
    return "-" if value is None else str(value)


def _md_cell(value: Cell) -> str:
    return _text(value).replace("|", "\\|")


def _inline_html(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only Markdown the pages use inline)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

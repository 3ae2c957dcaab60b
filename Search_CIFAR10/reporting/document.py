"""A small document model: headings, text, notes, lists, tables, figures and code, rendered to Markdown
(figures as files beside it) and to one self-contained HTML page (figures embedded as base64)."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple


@dataclass
class Figure:
    file: str        # name inside the assets folder
    data: bytes      # the PNG
    caption: str


class Document:
    def __init__(self) -> None:
        self.blocks: List[Tuple[str, Any]] = []
        self.figures: List[Figure] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def items(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("items", list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] = ()) -> None:
        self.blocks.append(("table", (list(headers), [list(r) for r in rows], list(numeric))))

    def figure(self, fig: Figure) -> None:
        self.figures.append(fig)
        self.blocks.append(("figure", fig))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # -- Markdown --------------------------------------------------------------------------------------
    def markdown(self, assets: str) -> str:
        out: List[str] = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "text":
                out.append(value)
            elif kind == "note":
                out.append("> " + value)
            elif kind == "items":
                out.append("\n".join("- " + v for v in value))
            elif kind == "code":
                out.append("```\n" + value.rstrip("\n") + "\n```")
            elif kind == "figure":
                out.append(f"![{value.caption}]({assets}/{value.file})\n\n*{value.caption}*")
            elif kind == "table":
                headers, rows, numeric = value
                align = [("--:" if (numeric[i] if i < len(numeric) else False) else ":--") for i in range(len(headers))]

                def line(cells):
                    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
                out.append("\n".join([line(headers), line(align)] + [line(r) for r in rows]))
        return "\n\n".join(out) + "\n"

    # -- HTML ------------------------------------------------------------------------------------------
    def html(self, title: str) -> str:
        e = html.escape
        body: List[str] = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{e(value[1])}</h{value[0]}>")
            elif kind == "text":
                body.append(f"<p>{_inline_html(value)}</p>")
            elif kind == "note":
                body.append(f'<p class="note">{_inline_html(value)}</p>')
            elif kind == "items":
                body.append("<ul>" + "".join(f"<li>{_inline_html(v)}</li>" for v in value) + "</ul>")
            elif kind == "code":
                body.append(f"<pre>{e(value)}</pre>")
            elif kind == "figure":
                data = base64.b64encode(value.data).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(value.caption)}">'
                            f"<figcaption>{e(value.caption)}</figcaption></figure>")
            elif kind == "table":
                headers, rows, numeric = value

                def cls(i):
                    return ' class="num"' if i < len(numeric) and numeric[i] else ""
                head = "".join(f"<th{cls(i)}>{e(str(h))}</th>" for i, h in enumerate(headers))
                lines = "".join("<tr>" + "".join(f"<td{cls(i)}>{_inline_html(str(c))}</td>" for i, c in enumerate(r))
                                + "</tr>" for r in rows)
                body.append(f'<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>')
        return HTML_TEMPLATE.format(title=e(title), body="\n".join(body))


def _inline_html(text: str) -> str:
    """Escape, then render the Markdown the report itself writes inline: `code` and **bold**."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td.num, th.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1.2em 0; }}
figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: 0.9em; color: #555; }}
p.note {{ border-left: 4px solid #E69F00; background: #fff8e6; padding: 0.4em 0.8em; }}
code, pre {{ background: #f6f6f6; font-size: 0.92em; }}
pre {{ padding: 0.6em; overflow-x: auto; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""

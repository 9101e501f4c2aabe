"""A small Markdown-to-HTML writer for the report's own subset (headings, paragraphs, lists,
pipe tables, images, **bold**, `code`): ``report/index.html`` beside ``index.md``, no extra package."""

from __future__ import annotations

import html
import re
from typing import List

_IMG = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)(?: !\[([^\]]*)\]\(([^)]+)\))?$")


def _inline(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)


def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(md: str, title: str = "report") -> str:
    """HTML page of ``md`` (the subset above; anything else becomes a paragraph)."""
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
    ]
    lines, i = md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif _IMG.match(line.strip()):
            g = _IMG.match(line.strip()).groups()
            imgs = [(g[k], g[k + 1]) for k in (0, 2) if g[k + 1]]
            out.append(
                "<p>"
                + " ".join(
                    f"<img src='{html.escape(src)}' alt='{html.escape(alt)}' style='max-width:{100 // len(imgs) - 1}%'>"
                    for alt, src in imgs
                )
                + "</p>"
            )
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            body = [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</table>")
        elif line.startswith("* "):
            out.append("<ul>")
            while i < len(lines) and lines[i].startswith("* "):
                out.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "* ", "![")):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out + ["</body></html>"]) + "\n"

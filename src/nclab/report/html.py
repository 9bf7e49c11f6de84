"""Markdown -> one self-contained HTML page: rendered by markdown-it-py (CommonMark + tables),
images inlined as data URIs, every table sortable by clicking its header (a small inline
script: numbers sort numerically, by the leading number of cells such as ``0.52 ± 0.03``).

The Markdown file stays the source of truth; the HTML is a view of the same text, so the two
never disagree. Raw HTML in the Markdown is escaped, not passed through.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

__all__ = ["render_markdown", "markdown_page", "write_markdown_html"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml"}

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:90%}"
    "pre code{display:block;padding:.6em;overflow-x:auto}"
    "table{border-collapse:collapse;font-size:12px;margin:1em 0;display:block;overflow-x:auto}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
    "th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap}"
    "th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}"
    "img{max-width:100%}p>img:not(:only-child){width:49%}"
    "em{color:#444}"
)

# Click a header to sort by that column; click again to reverse. Cells that start with a number
# sort numerically (and before text cells); the rest compare as text.
SORT_JS = """
(function(){
function key(td){var s=td?td.textContent.trim():"";
  var m=s.match(/^[-+\\u2212]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i);
  return m?parseFloat(m[0].replace("\\u2212","-")):s.toLowerCase();}
function cmp(x,y){var nx=typeof x==="number",ny=typeof y==="number";
  if(nx&&ny)return x-y; if(nx)return -1; if(ny)return 1; return x<y?-1:x>y?1:0;}
document.querySelectorAll("table").forEach(function(t){
  if(!t.tHead||!t.tBodies.length)return;
  var ths=t.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,i){
    th.title="click to sort";
    th.addEventListener("click",function(){
      var dir=th.getAttribute("aria-sort")==="ascending"?-1:1;
      Array.prototype.forEach.call(ths,function(h){h.removeAttribute("aria-sort");});
      th.setAttribute("aria-sort",dir===1?"ascending":"descending");
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){return dir*cmp(key(a.cells[i]),key(b.cells[i]));});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
})();
"""


_MD_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "\\`", "\\": "\\\\",
                             "\n": " ", "\r": " "})


def md_text(value) -> str:
    """A string from a store or config as inert Markdown text: no raw HTML (``<script>``), code
    spans or table breaks; Markdown renderers show it as written, as the HTML report does."""
    return str(value).translate(_MD_ESCAPES)


def render_markdown(text: str) -> str:
    """CommonMark with GitHub-style tables, raw HTML escaped; returns the HTML body."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _inline_images(body: str, base_dir: Path) -> str:
    base = base_dir.resolve()

    def repl(m: re.Match) -> str:
        src = html.unescape(m.group(2))
        if re.match(r"^[a-z][a-z0-9+.-]*:", src, re.I):  # data:, http:, file: ... left as they are
            return m.group(0)
        path = (base / src).resolve()
        mime = _MIME.get(path.suffix.lower())
        if mime is None or not path.is_file() or not path.is_relative_to(base):
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'{m.group(1)}"data:{mime};base64,{data}"'

    return re.sub(r'(<img src=)"([^"]*)"', repl, body)


def markdown_page(text: str, *, title: str, base_dir: str | Path | None = None) -> str:
    """A complete HTML document for the Markdown ``text``; relative image paths are read from
    ``base_dir`` (where the ``.md`` file lives) and inlined, so the page is one file."""
    body = render_markdown(text)
    if base_dir is not None:
        body = _inline_images(body, Path(base_dir))
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body>\n{body}<script>{SORT_JS}</script></body></html>\n")


def write_markdown_html(path: str | Path, text: str, *, title: str, base_dir: str | Path | None = None) -> Path:
    """Write :func:`markdown_page` atomically to ``path`` (images relative to ``base_dir``,
    default the folder of ``path``)."""
    from nclab.store.files import atomic_write_text

    path = Path(path)
    atomic_write_text(path, markdown_page(text, title=title, base_dir=path.parent if base_dir is None else base_dir))
    return path

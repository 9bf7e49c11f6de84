"""HTML report rendering (markdown-it-py, inlined images, sortable tables) and the size legend
of the memorization-dilation scatter."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from nclab.report.html import SORT_JS, markdown_page, render_markdown, write_markdown_html

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)

MD = """# Report

Built from the store `studies/md` with **24** runs; see <b>raw</b> html.

| loss | noise rate | dilation |
|---|---|---|
| ce | 0.2 | 0.52 ± 0.03 |
| ls | 0.1 | 0.31 ± 0.02 |

![Memorization vs dilation](figures/a.png)
*Memorization vs dilation.*
"""


class _Texts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.tags, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data):
        if "script" not in self.stack and "style" not in self.stack:
            self.text.append(data)


def test_markdown_is_rendered_not_shown_literally(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(PNG_1x1)
    page = markdown_page(MD, title="t", base_dir=tmp_path)
    p = _Texts()
    p.feed(page)
    text = "".join(p.text)
    tags = [t for t, _ in p.tags]
    assert "`" not in text and "**" not in text and "|---" not in text  # no Markdown syntax left
    assert "studies/md" in text and "<b>raw</b>" in text  # raw HTML is escaped, shown as text
    assert {"code", "strong", "table", "thead", "tbody", "em", "h1"} <= set(tags)
    assert "b" not in tags
    (img,) = [a for t, a in p.tags if t == "img"]
    assert img["src"].startswith("data:image/png;base64,") and img["alt"] == "Memorization vs dilation"
    assert "<script>" in page and SORT_JS.strip()[:20] in page
    out = write_markdown_html(tmp_path / "r.html", MD, title="t")  # base_dir defaults to the page's folder
    assert "data:image/png;base64," in out.read_text()
    # images outside the folder or missing stay as links (nothing is read from elsewhere)
    assert 'src="../x.png"' in render_markdown("![x](../x.png)")
    assert 'src="../x.png"' in markdown_page("![x](../x.png)", title="t", base_dir=tmp_path)


_FAKE_DOM = r"""
function cell(s){return {textContent:s};}
function row(cells){return {cells:cells.map(cell)};}
var attrs={}, listeners=[];
function th(i){return {setAttribute:function(k,v){attrs[i]=v;},getAttribute:function(){return attrs[i];},
  removeAttribute:function(){delete attrs[i];},addEventListener:function(e,f){listeners[i]=f;}};}
var body={rows:[row(["ls","0.52 ± 0.03"]),row(["ce","n/a"]),row(["lr","-0.1"]),row(["ce","10"])],
  appendChild:function(r){var i=this.rows.indexOf(r);this.rows.splice(i,1);this.rows.push(r);}};
var table={tHead:{rows:[{cells:[th(0),th(1)]}]},tBodies:[body]};
globalThis.document={querySelectorAll:function(){return [table];}};
SCRIPT
function col(j){return body.rows.map(function(r){return r.cells[j].textContent;}).join(",");}
listeners[1](); var up=col(1); listeners[1](); var down=col(1); listeners[0](); var byName=col(0);
console.log(JSON.stringify([up,down,byName,attrs[0]]));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="no JavaScript engine (node) to run the inline sorter")
def test_inline_sorter_sorts_numbers_then_text(tmp_path):
    js = tmp_path / "t.js"
    js.write_text(_FAKE_DOM.replace("SCRIPT", SORT_JS))
    out = subprocess.run(["node", str(js)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    up, down, by_name, aria = json.loads(out.stdout)
    assert up == "-0.1,0.52 ± 0.03,10,n/a"  # numeric by leading number, text last
    assert down == "n/a,10,0.52 ± 0.03,-0.1"  # second click reverses
    assert by_name == "ce,ce,lr,ls" and aria == "ascending"


def test_md_scatter_has_a_legend_for_marker_size(tmp_path, monkeypatch):
    import nclab.report.style as style
    from nclab.report.study_report import _md_scatter

    figs = []
    monkeypatch.setattr(style, "save", lambda fig, path: figs.append(fig))
    recs = [{"dataset": "d", "variant": "main", "loss": loss, "noise_rate": rate, "realized_noise": rate / 2,
             "status": "completed", "geometry": "orthogonal frame", "memorization": m + rate, "dilation": 0.5 * m + rate}
            for loss in ("ce", "ls") for rate in (0.1, 0.2, 0.4) for m in (0.1, 0.2, 0.3)]
    _md_scatter(recs, "d", tmp_path / "x.png")
    (fig,) = figs
    ax = fig.axes[0]
    from matplotlib.legend import Legend

    legends = [a for a in ax.get_children() if isinstance(a, Legend)]
    titles = {lg.get_title().get_text(): [t.get_text() for t in lg.get_texts()] for lg in legends}
    assert titles["realized noise η (size)"] == ["0.05", "0.1", "0.2"]
    size_legend = next(lg for lg in legends if lg.get_title().get_text() == "realized noise η (size)")
    sizes = [h.get_sizes()[0] for h in size_legend.legend_handles]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # bigger marker, more noise
    assert any(re.match(r"loss", t) for t in titles)
    import matplotlib.pyplot as plt

    plt.close(fig)

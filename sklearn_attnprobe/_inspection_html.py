"""Plain-text and HTML rendering of :class:`~sklearn_attnprobe.inspection.MaxActivatingExamples`.

The HTML is self-contained: inline CSS only, no scripts, fonts or other
external resources. Every string that comes from the data (tokens, class
names) is escaped with :func:`html.escape`. CSS classes carry a ``mae-``
prefix so that the fragment shown in a notebook does not restyle the page
around it.
"""

import html

import numpy as np

# (red, green, blue) of the shading
_ATTENTION_RGB = (255, 140, 0)  # orange
_FOR_RGB = (30, 110, 230)  # blue: towards the list's class
_AGAINST_RGB = (220, 50, 50)  # red: away from it

_CSS = """
.mae-report { font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
  color: #222; line-height: 1.5; }
.mae-report h1 { font-size: 1.4em; margin: 0.4em 0; }
.mae-report h2 { font-size: 1.2em; margin: 1.2em 0 0.3em;
  border-bottom: 1px solid #ccc; }
.mae-report h3 { font-size: 1em; margin: 0.8em 0 0.2em; }
.mae-report table { border-collapse: collapse; margin-bottom: 0.8em; }
.mae-report th, .mae-report td { padding: 2px 8px; text-align: left;
  vertical-align: top; border-bottom: 1px solid #eee; }
.mae-report td.mae-num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.mae-ctx { font-family: ui-monospace, Menlo, Consolas, monospace;
  white-space: pre-wrap; }
.mae-tok { padding: 0 1px; border-radius: 2px; }
.mae-focus { outline: 2px solid #222; font-weight: bold; }
.mae-more { color: #999; }
.mae-empty { color: #999; font-style: italic; }
""".strip()


def _header(ex):
    return (f"Maximum activating examples: {ex.n_heads} head(s), {ex.n_texts} "
            f"texts, {len(ex.classes)} classes, context {ex.context}")


def _attention_title(ex):
    return f"Highest attention {ex.rank_by}"


def _class_title(ex, k):
    binary = len(ex.classes) == 2 and ex.intercept.shape[0] == 1
    note = ""
    if binary:
        note = " (log-odds)" if k == 1 else " (negated log-odds)"
    return f"Highest contribution to class {ex.class_names[k]}{note}"


def _lists(ex, head):
    """``(title, entries, kind)`` of one head's ranked lists, in order."""
    yield _attention_title(ex), ex.attention[head], "attention"
    for k, entries in enumerate(ex.contributions[head].values()):
        yield _class_title(ex, k), entries, "contribution"


# -- plain text ------------------------------------------------------------------
# decoded tokens may hold newlines or tabs: shown escaped, a report line
# stays one line and the token boundaries stay visible
_CONTROL = {c: f"\\x{c:02x}" for c in range(32)}
_CONTROL.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def visible(token):
    """``token`` with control characters escaped (``"\\n"`` for a newline)."""
    return str(token).translate(_CONTROL)


def _mark_cut(e, body, more):
    """``body`` with ``more`` on each side where the window cuts the text."""
    if e.start > 0:
        body = f"{more} {body}"
    if e.start + len(e.window_tokens) < e.n_tokens:
        body = f"{body} {more}"
    return body


def _text_window(e):
    parts = [f"[[{visible(tok)}]]" if j == e.focus else visible(tok)
             for j, tok in enumerate(e.window_tokens)]
    return _mark_cut(e, " ".join(parts), "...")


def _text_numbers(e, kind):
    if kind == "attention":
        return f"weight {e.weight:.4f}, score {e.score:.4g}"
    return f"contribution {e.value:+.4g} (weight {e.weight:.4f})"


def render_text(ex):
    """The plain-text report."""
    lines = [_header(ex)]
    for h in range(ex.n_heads):
        lines += ["", f"Head {h}", "=" * len(f"Head {h}")]
        for title, entries, kind in _lists(ex, h):
            lines.append(title + ":")
            if not entries:
                lines.append("   (none)")
            for r, e in enumerate(entries, 1):
                lines.append(f"  {r:2d}. text {e.text}, token {e.token}: "
                             f"{_text_numbers(e, kind)}")
                lines.append("      " + _text_window(e))
    return "\n".join(lines) + "\n"


# -- HTML -----------------------------------------------------------------------
def _esc(s):
    return html.escape(str(s), quote=True)


def _shade(value, scale, kind):
    if kind == "attention":
        rgb = _ATTENTION_RGB
    else:
        rgb = _FOR_RGB if value >= 0 else _AGAINST_RGB
    alpha = 0.0 if scale <= 0 or not np.isfinite(value) else min(1.0, abs(value) / scale)
    return f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.3f})"


def _html_window(e, kind):
    values = np.asarray(e.window_values, dtype=np.float64)
    finite = np.abs(values[np.isfinite(values)])
    scale = float(finite.max()) if finite.size else 0.0
    label = "weight" if kind == "attention" else "contribution"
    spans = []
    for j, (tok, v) in enumerate(zip(e.window_tokens, values.tolist())):
        cls = "mae-tok mae-focus" if j == e.focus else "mae-tok"
        title = f"token {e.start + j}: {label} {v:.4g}"
        spans.append(f'<span class="{cls}" style="background-color: '
                     f'{_shade(v, scale, kind)}" title="{_esc(title)}">'
                     f"{_esc(visible(tok))}</span>")
    return _mark_cut(e, " ".join(spans), '<span class="mae-more">&hellip;</span>')


def _html_table(entries, kind):
    if not entries:
        return '<p class="mae-empty">no tokens</p>'
    if kind == "attention":
        head = "<th>weight</th><th>score</th>"
    else:
        head = "<th>contribution</th><th>weight</th>"
    rows = [f"<tr><th>#</th><th>text</th><th>token</th>{head}<th>context</th></tr>"]
    for r, e in enumerate(entries, 1):
        if kind == "attention":
            nums = f"{e.weight:.4f}", f"{e.score:.4g}"
        else:
            nums = f"{e.value:+.4g}", f"{e.weight:.4f}"
        cells = "".join(f'<td class="mae-num">{_esc(x)}</td>'
                        for x in (r, e.text, e.token, *nums))
        rows.append(f'<tr>{cells}<td class="mae-ctx">{_html_window(e, kind)}</td></tr>')
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def render_html(ex, full_page=True):
    """A whole HTML page (``full_page``) or a fragment for notebooks."""
    parts = [f"<h1>{_esc(_header(ex))}</h1>",
             "<p>Shading: attention weight (orange), contribution towards the "
             "list's class (blue) or against it (red), relative to the largest "
             "value in the window; hover a token for its value. The ranked "
             "token is outlined.</p>"]
    for h in range(ex.n_heads):
        parts.append(f'<section id="head-{h}"><h2>Head {h}</h2>')
        for title, entries, kind in _lists(ex, h):
            parts.append(f"<h3>{_esc(title)}</h3>")
            parts.append(_html_table(entries, kind))
        parts.append("</section>")
    body = '<div class="mae-report">\n' + "\n".join(parts) + "\n</div>"
    style = f"<style>\n{_CSS}\n</style>"
    if not full_page:
        return style + "\n" + body
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>Maximum activating examples</title>\n"
            f"{style}\n</head>\n<body>\n{body}\n</body>\n</html>\n")

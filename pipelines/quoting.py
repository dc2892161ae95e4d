"""User-named text (class folder names, data paths, model, pool and deployment names, a person's
reason) quoted for where it lands, so that it is shown as itself and never read as markup or code.

- `md(text)`: text in Markdown that may be rendered as HTML (MLflow model cards, Prefect artifacts),
  also inside a table cell: `&`, `<`, `>` as HTML entities (no tag can open); `|` (a table cell's
  end), backticks (a code span), `\\`, `[`, `]` (a link), `~` (struck out), line breaks and other
  control characters (a table row or a `**Promotion:` line stays one line), `*` and `_` (emphasis)
  as numeric references (a backslash escape would show inside `<code>`, as MLflow renders it). Markdown renderers read
  all of these back as the characters themselves (tests/test_quoting.py renders with CommonMark +
  tables and with Python-Markdown).
- `md_code(text)`: the same shown as code (`<code>`: a Markdown code span shows entities literally).
- `chat(text)`: a chat webhook's `text` line: `&`, `<`, `>` as entities, the escaping Slack's
  message format asks for (`<!channel>` would ping everyone, `<url|text>` is a link); Mattermost
  and Teams read Markdown, which shows the entities as the characters.
- `sh(word)`: one word of a shell command line printed for a person to paste (shlex.quote).
- `json_sh(obj)`: a JSON body as one shell word whose text holds no `<`, `>`, `&`, `'` or backtick
  (JSON's own \\u escapes, so it parses back to the same value), safe inside a Markdown code block
  and a shell line alike.

Imports only the standard library; any layer of pipelines may use it.
"""

from __future__ import annotations

import html
import json
import shlex
import unicodedata

_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "`": "&#96;", "\\": "&#92;"}
_ENTITY |= {"[": "&#91;", "]": "&#93;", "~": "&#126;", "*": "&#42;", "_": "&#95;"}
_JSON_ESCAPE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027", "`": "\\u0060"}


def _char(c: str) -> str:
    if c in _ENTITY:
        return _ENTITY[c]
    if unicodedata.category(c) in ("Cc", "Zl", "Zp"):  # line breaks, NUL, escape sequences
        return "&#65533;" if c == "\0" else f"&#{ord(c)};"
    return c


def md(text: object) -> str:
    """`text` as literal text in Markdown rendered to HTML (table cells included)."""
    return "".join(map(_char, str(text)))


def md_code(text: object) -> str:
    """`text` shown as code in Markdown, literally."""
    return f"<code>{md(text)}</code>"


def chat(text: object) -> str:
    """`text` for a chat webhook's message line, shown as itself."""
    return html.escape(str(text), quote=False)


def sh(word: object) -> str:
    """`word` as one shell word (quoted only when it needs to be)."""
    return shlex.quote(str(word))


def json_sh(obj: object) -> str:
    """`obj` as JSON, one shell word, free of characters HTML, Markdown or the shell would read."""
    text = json.dumps(obj)  # ASCII only: newlines and other control characters are \\u escapes
    for c, escaped in _JSON_ESCAPE.items():
        text = text.replace(c, escaped)
    return shlex.quote(text)

"""User-named text (class folders, paths, model and deployment names, a person's reason) quoted for
where it lands, shown as itself, never read as markup or code. Standard library only.

- `md`: Markdown rendered to HTML, table cells too (MLflow cards, Prefect artifacts): `&<>|`, backtick,
  `\\[]~*_` and control characters as entities (numeric ones for `*`/`_`: a backslash escape shows
  inside `<code>`); tests/test_quoting.py renders with CommonMark and Python-Markdown.
- `chat`: a chat message: `&<>` as entities, as Slack asks (`<!channel>` pings, `<url|text>` links).
- `json_sh`: JSON as one shell word free of `<>&'` and backtick (JSON's \\u escapes), safe in a
  Markdown code block and a shell line alike.
"""

from __future__ import annotations

import html
import json
import shlex

_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "`": "&#96;", "\\": "&#92;"}
_ENTITY |= {"[": "&#91;", "]": "&#93;", "~": "&#126;", "*": "&#42;", "_": "&#95;"}
# Unicode's control characters (Cc), line and paragraph separators: line breaks, NUL, escape sequences
_ENTITY |= {chr(i): f"&#{i};" for i in (*range(1, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}
_MD = str.maketrans(_ENTITY | {"\0": "&#65533;"})
_JSON_ESCAPE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027", "`": "\\u0060"}


def md(text: object) -> str:
    return str(text).translate(_MD)


def md_code(text: object) -> str:
    return f"<code>{md(text)}</code>"


def chat(text: object) -> str:
    return html.escape(str(text), quote=False)


def sh(word: object) -> str:
    return shlex.quote(str(word))


def json_sh(obj: object) -> str:
    # json.dumps: ASCII only, newlines and other control characters are \\u escapes
    return shlex.quote(json.dumps(obj).translate(str.maketrans(_JSON_ESCAPE)))

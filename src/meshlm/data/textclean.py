"""Plain text out of source files and markup, for corpus building (see docs/data.md).

- :func:`strip_licence_header`: drop the licence/SPDX comment blocks at the top of a file;
- :func:`html_to_text`: the main content of an HTML page, without navigation, scripts or styles;
- :func:`roff_to_text`: a man page (man or mdoc macros) as plain text;
- :func:`pod_to_text`: Perl POD as plain text.

Each is a small, deterministic approximation that keeps the words and the layout that matter to
a language model (paragraph breaks, code blocks), not a faithful renderer.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

LICENCE_WORDS = re.compile(
    r"copyright|licen[cs]e|spdx-license|warranty|all rights reserved|permission is hereby granted|"
    r"redistribution and use",
    re.IGNORECASE,
)
MAX_HEADER_CHARS = 6000  # a leading comment longer than this is documentation, not a licence header
_LINE_COMMENTS = ("//", "--", ";;", "..", "%", "#")


def _leading_comment(text: str) -> tuple[str, str] | None:
    """Split ``text`` (no leading whitespace) into its first comment block and the rest, or None."""
    if text.startswith("/*"):
        end = text.find("*/")
        return (text, "") if end < 0 else (text[: end + 2], text[end + 2 :])
    prefix = next((p for p in _LINE_COMMENTS if text.startswith(p)), None)
    if prefix is None or (prefix == "#" and text[1:2] not in (" ", "\n", "#", "-", "*", "")):
        return None  # "#include", "#define": C preprocessor lines are code
    lines = text.split("\n")
    count = 0
    while count < len(lines) and lines[count].lstrip().startswith(prefix):
        count += 1
    return "\n".join(lines[:count]), "\n".join(lines[count:])


def strip_licence_header(text: str) -> str:
    """``text`` without the comment blocks at its top that mention a licence or copyright.

    Block (``/* */``) and line comments (``//``, ``#``, ``--``, ``;;``, ``%``, reST ``..``) are
    recognised; blocks are dropped one after another while each names a licence, copyright or
    SPDX identifier and is at most MAX_HEADER_CHARS long. A ``#!`` line is kept.
    """
    rest = text.lstrip()
    shebang = ""
    if rest.startswith("#!"):
        line, _, rest = rest.partition("\n")
        shebang, rest = line + "\n", rest.lstrip()
    while (split := _leading_comment(rest)) is not None:
        block, after = split
        if len(block) > MAX_HEADER_CHARS or not LICENCE_WORDS.search(block):
            break
        rest = after.lstrip()
    return shebang + rest


_SKIP_TAGS = frozenset({"script", "style", "nav", "header", "footer", "noscript", "head", "form", "button", "svg"})
_SKIP_CLASS = re.compile(
    r"\b(nav|navbar|navigation|sidebar|sphinxsidebar|sphinxsidebarwrapper|related|breadcrumbs?|footer|header|"
    r"menu|headerlink|editsection|printfooter|catlinks|toc|mw-head|mw-panel|mw-navigation|searchbox|siteSub|contentSub)\b",
    re.IGNORECASE,
)
_MAIN = re.compile(r'<main\b|role="main"|id="(DisplayArea|mw-content-text|bodyContent|yui-main)"')
_MAIN_IDS = frozenset({"DisplayArea", "mw-content-text", "bodyContent", "yui-main"})
_BLOCK_TAGS = frozenset(
    {"p", "div", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "dl", "section", "blockquote"}
)
_LINE_TAGS = frozenset({"br", "li", "tr", "dt", "dd"})
_VOID_TAGS = frozenset({"br", "img", "hr", "meta", "link", "input", "wbr", "col", "area", "base", "source"})


class _TextExtractor(HTMLParser):
    """Collects text, skipping navigation-like elements; with ``main_only``, only inside the main element."""

    def __init__(self, main_only: bool):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.main_only = main_only
        self.skip: tuple[str, int] | None = None  # (tag, nesting depth) of the element being skipped
        self.main: tuple[str, int] | None = None
        self.main_done = False
        self.pre = 0

    def _is_main(self, tag: str, attrs: dict) -> bool:
        return tag == "main" or attrs.get("role") == "main" or attrs.get("id") in _MAIN_IDS

    def handle_starttag(self, tag: str, attrs_list: list) -> None:
        if tag in _VOID_TAGS:
            if tag == "br" and self._active():
                self.parts.append("\n")
            return
        attrs = {k: v or "" for k, v in attrs_list}
        if self.skip is not None:
            if tag == self.skip[0]:
                self.skip = (tag, self.skip[1] + 1)
            return
        if self.main_only and self.main is None and not self.main_done:
            if self._is_main(tag, attrs):
                self.main = (tag, 0)
            return
        if self.main is not None and tag == self.main[0]:
            self.main = (tag, self.main[1] + 1)
        if tag in _SKIP_TAGS or _SKIP_CLASS.search(attrs.get("class", "")) or _SKIP_CLASS.search(attrs.get("id", "")):
            self.skip = (tag, 0)
            return
        if tag == "pre":
            self.pre += 1
        self._break(tag, start=True)

    def handle_endtag(self, tag: str) -> None:
        if self.skip is not None:
            if tag == self.skip[0]:
                self.skip = None if self.skip[1] == 0 else (tag, self.skip[1] - 1)
            return
        if self.main is not None and tag == self.main[0]:
            if self.main[1] == 0:
                self.main, self.main_done = None, True
                return
            self.main = (tag, self.main[1] - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        self._break(tag, start=False)

    def _active(self) -> bool:
        return self.skip is None and (not self.main_only or self.main is not None)

    def _break(self, tag: str, start: bool) -> None:
        """Blocks are separated by a blank line; a list item or table row starts a new line."""
        if self._active():
            if tag in _BLOCK_TAGS:
                self.parts.append("\n\n")
            elif tag in _LINE_TAGS and start:
                self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._active():
            if not self.pre:  # collapse whitespace, none at the start of a line
                data = re.sub(r"\s+", " ", data)
                if not self.parts or self.parts[-1].endswith("\n"):
                    data = data.lstrip()
            self.parts.append(data)


def tidy(text: str) -> str:
    """Strip trailing spaces on every line, at most one blank line in a row, no blank start/end."""
    text = re.sub(r"[ \t\r\f\v]+\n", "\n", text.replace("\r\n", "\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def html_to_text(html: str) -> str:
    """The visible text of ``html``: only the main element when there is one (``<main>``,
    ``role="main"``, MediaWiki/LibreOffice/Django content ids), always without scripts, styles,
    headers, footers and navigation (elements whose class or id names nav/sidebar/menu/toc...)."""
    parser = _TextExtractor(main_only=bool(_MAIN.search(html)))
    parser.feed(html)
    parser.close()
    return tidy("".join(parser.parts))


_ROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[+-]?\d"), ""),  # size changes
    (re.compile(r"\\\(em|\\\(en"), "-"),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((aq|oq|cq)"), "'"),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[&|^%:]"), ""),
    (re.compile(r"\\[-e]"), lambda m: "-" if m.group(0) == "\\-" else "\\"),
    (re.compile(r"\\ "), " "),
]
_ROFF_BREAKS = frozenset({"Pp", "PP", "LP", "P", "sp", "Bl", "El", "Bd", "Ed", "br", "TP", "IP", "HP", "RS", "RE"})
_ROFF_DROP = frozenset({"Dd", "Dt", "Os", "TH", "ds", "de", "nr", "so", "ad", "na", "nh", "hy", "ft", "in", "ti", "ll"})
_MDOC_XR = re.compile(r"^Xr\s+(\S+)\s+(\S+)(.*)$")


def _roff_inline(text: str) -> str:
    for pattern, repl in _ROFF_ESCAPES:
        text = pattern.sub(repl, text)
    return text


def roff_to_text(source: str) -> str:
    """Plain text of a man page: comments dropped, macro lines reduced to their words
    (``.Sh NAME`` -> ``NAME``, ``.Xr ls 1`` -> ``ls(1)``), text lines filled into paragraphs
    (as roff does), paragraph macros to blank lines, literal blocks (``.nf``, ``.Bd -literal``) kept."""
    paragraphs: list[str] = []
    words: list[str] = []
    literal = False

    def flush() -> None:
        if words:
            paragraphs.append(("\n" if literal else " ").join(words))
            words.clear()

    for line in source.split("\n"):
        if line.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if line.startswith((".", "'")):
            body = line[1:].strip()
            name = body.split(" ", 1)[0]
            if name in ("nf", "fi") or (name in ("Bd", "Ed") and (name == "Ed" or "-literal" in body)):
                flush()
                literal = name in ("nf", "Bd")
                continue
            if name in _ROFF_DROP or not name:
                continue
            if name in _ROFF_BREAKS:
                flush()
                continue
            if name in ("Sh", "SH", "Ss", "SS"):
                flush()
                paragraphs.append(_roff_inline(body[len(name) :].strip().strip('"')))
                continue
            rest = body[len(name) :].strip()
            if match := _MDOC_XR.match(body):
                rest = f"{match.group(1)}({match.group(2)}){match.group(3)}"
            line = re.sub(r"\b(Ns|Pf|Ar|Fl|Cm|Nm|Fn|Fa|Ft|Va|Dv|Er|Ev|Pa|Li|Em|Sy|Ql|Dq|Sq|Pq|Xr)\b ?", "", rest)
            line = line.replace('"', "")
        text = _roff_inline(line)
        if literal or text.strip():
            words.append(text if literal else text.strip())
    flush()
    return tidy("\n\n".join(paragraphs))


_POD_CODE = re.compile(r"[IBCLFSXZ]<(?!<)((?:[^<>]|E<\w+>)*)>")  # innermost first; E<...> inside is fine
_POD_ENTITY = re.compile(r"E<(\w+)>")
_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}


def _pod_inline(text: str) -> str:
    def repl(match: re.Match) -> str:
        code, inner = match.group(0)[0], match.group(1)
        if code in "XZ":
            return ""
        if code == "L":
            return inner.split("|", 1)[0] if "|" in inner else inner.split("/")[-1].strip('"') or inner
        return inner

    text = re.sub(r"([IBCLEFSXZ])<<+\s(.*?)\s>>+", lambda m: f"{m.group(1)}<{m.group(2)}>", text)
    for _ in range(4):  # nested codes, innermost first
        text, count = _POD_CODE.subn(repl, text)
        if not count:
            break
    return _POD_ENTITY.sub(lambda m: _POD_ENTITIES.get(m[1], chr(int(m[1])) if m[1].isdigit() else ""), text)


def pod_to_text(source: str) -> str:
    """Plain text of Perl POD: ``=head`` lines become headings, ``=item`` list items, other
    commands are dropped, formatting codes (``B<...>``, ``L<...>``, ``E<gt>``) reduced to their text."""
    out: list[str] = []
    bullet = ""  # an "=item *" with no text of its own marks the next paragraph
    for para in re.split(r"\n[ \t]*\n", source):
        if bullet and not para.startswith("="):
            para, bullet = bullet + para, ""
        if para.startswith("=head"):
            out.append(_pod_inline(para.split(None, 1)[1] if " " in para else ""))
        elif para.startswith("=item"):
            item = para[5:].strip().removeprefix("*").strip()
            if item:
                out.append("- " + _pod_inline(item))
            else:
                bullet = "- "
        elif para.startswith("="):
            continue
        elif para.startswith((" ", "\t")):
            out.append(para)  # verbatim block
        else:
            out.append(_pod_inline(para))
    return tidy("\n\n".join(p for p in out if p.strip()))

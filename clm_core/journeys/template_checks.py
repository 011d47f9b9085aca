"""What a template can get wrong and still render: checks on its source and on its output.

Rendering catches syntax errors and undefined variables. It does not catch

- text that looks like a placeholder but is not one: ``{ links.shop }``, ``{{ x }``, ``{ x }}``
  and ``${x}`` render as themselves, so a button links to the literal text;
- text outside the blocks of a template that extends a layout: Jinja never renders it, so
  nothing that renders it can notice;
- links that only work in a browser's address bar: every ``href`` and ``src`` in an email must
  be an absolute http(s) URL (or ``mailto:``) once rendered, since a mail client has no page to
  resolve a relative one against.

The source checks read the files (file:line:column of each finding); the link check reads the
rendered HTML and finds the attribute in the sources that produced it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Mapping
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import jinja2
from jinja2 import meta, nodes

from clm_core.errors import Problem
from clm_core.templating import TemplateStore

# Jinja constructs, masked (same length, newlines kept) before looking for fake placeholders.
# An expression is masked only when it is well formed and brace-free inside, so a broken one such
# as ``{{ links.shop }">`` stays visible to the checks below.
_JINJA = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}|\{#.*?#\}|\{%.*?%\}"
                    r"|\{\{[^{}]*\}\}", re.DOTALL)
# A name with an optional filter; never ':' or ';', so CSS rules such as "{ margin: 0 }" pass.
_NAME = r"\s*[A-Za-z_][\w.]*(?:\s*\|[^{}:;\n]*)?\s*"
_FAKE = [
    (re.compile(r"\$\{" + _NAME + r"\}"), "${...} is not a placeholder here"),
    (re.compile(r"\{\{" + _NAME + r"\}(?!\})"), "a placeholder opened with {{ but closed with }"),
    (
        re.compile(r"(?<![{$])\{" + _NAME + r"\}\}"),
        "a placeholder opened with { but closed with }}",
    ),
    (re.compile(r"(?<![{$])\{" + _NAME + r"\}(?!\})"), "single braces are not a placeholder"),
]
URL_ATTRIBUTES = ("href", "src", "background", "action")
_ATTR = re.compile(r"""\b(href|src|background|action)\s*=\s*(?:"([^"]*)"|'([^']*)')""",
                   re.IGNORECASE)


def _masked(source: str) -> str:
    return _JINJA.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), source)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def fake_placeholders(source: str, file: str) -> list[Problem]:
    """Errors for text that looks like a placeholder and would be sent as it is."""
    text = _masked(source)
    problems: list[Problem] = []
    for pattern, what in _FAKE:  # the look-behinds keep "${x}" and "{{x}" from also being "{x}"
        for m in pattern.finditer(text):
            inner = m.group(0).strip("${} ").strip()
            line, col = _position(text, m.start())
            problems.append(Problem(file, line, col, f"{what}: {m.group(0)!r} is sent as it is; "
                                    f"write {{{{ {inner} }}}}"))
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0))


_TOP_LEVEL_OK = (nodes.Extends, nodes.Block, nodes.Macro, nodes.Import, nodes.FromImport,
                 nodes.Assign, nodes.AssignBlock)


def text_outside_blocks(env: jinja2.Environment, source: str, file: str) -> list[Problem]:
    """In a template that extends a layout, output outside the blocks is never rendered."""
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError:
        return []  # rendering reports it, located
    if not any(isinstance(n, nodes.Extends) for n in tree.body):
        return []
    problems = []
    for node in tree.body:
        if isinstance(node, _TOP_LEVEL_OK):
            continue
        for out in ([node] if isinstance(node, nodes.Output) else node.find_all(nodes.Output)):
            for part in out.nodes:
                if isinstance(part, nodes.TemplateData) and not part.data.strip():
                    continue
                shown = part.data.strip() if isinstance(part, nodes.TemplateData) else "{{ ... }}"
                problems.append(Problem(file, part.lineno, None,
                                        f"{shown[:40]!r} is outside every block of a template "
                                        "that extends a layout, so it is never rendered: move it "
                                        "into a {% block %}"))
    return problems


def is_absolute(url: str) -> bool:
    """An http(s) URL with a host, or a mailto: address."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() == "mailto":
        return bool(parts.path)
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


class _Links(HTMLParser):
    """URL attributes of start tags (the text of <style> and <script> is never parsed as tags)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [(tag, name, value or "") for name, value in attrs if name in URL_ATTRIBUTES]


def links(rendered_html: str) -> list[tuple[str, str, str]]:
    """(tag, attribute, value) of every URL attribute in rendered HTML."""
    parser = _Links()
    parser.feed(rendered_html)
    parser.close()
    return parser.found


def bad_links(rendered_html: str) -> list[tuple[str, str, str]]:
    return [link for link in links(rendered_html) if not is_absolute(link[2])]


def sources(
    store: TemplateStore, path: str, cache: dict[str, list[str]] | None = None
) -> list[str]:
    """``path`` and every template it extends, includes or imports (paths in the store).
    ``cache`` keeps each file's direct references between calls."""
    refs = {} if cache is None else cache
    seen: list[str] = []
    todo = [path]
    while todo:
        p = todo.pop(0)
        if p in seen or not (store.root / p).is_file():
            continue
        seen.append(p)
        if p not in refs:
            try:
                tree = store.env.parse((store.root / p).read_text(encoding="utf-8"))
                refs[p] = [r for r in meta.find_referenced_templates(tree) if r]
            except jinja2.TemplateSyntaxError:
                refs[p] = []
        todo += refs[p]
    return seen


def _attributes(source: str) -> Iterator[tuple[int, int, str, str]]:
    """(line, column, attribute, raw value) of each URL attribute written in a template."""
    for m in _ATTR.finditer(source):
        line, col = _position(source, m.start())
        yield line, col, m.group(1).lower(), m.group(2) if m.group(2) is not None else m.group(3)


def locate_link(store: TemplateStore, path: str, attribute: str, value: str,
                context: Mapping[str, Any], cache: dict[str, list[str]] | None = None
                ) -> tuple[str, int | None, int | None]:
    """(file, line, column) of the attribute that rendered as ``value``: a literal value is
    compared as written, one with placeholders is rendered alone with the same context."""
    for p in sources(store, path, cache):
        source = (store.root / p).read_text(encoding="utf-8")
        for line, col, attr, raw in _attributes(source):
            if attr != attribute:
                continue
            if "{" not in raw:
                got = raw
            else:
                try:
                    got = store.env.from_string(raw).render(dict(context))
                except (jinja2.TemplateError, TypeError, ValueError, AttributeError):
                    continue  # a macro call or the like: not renderable alone, try the others
            if html.unescape(got).strip() == value.strip():
                return str(store.root / p), line, col
    return str(store.root / path), None, None


def source_problems(store: TemplateStore, path: str) -> list[Problem]:
    """Fake placeholders and text outside blocks in ``path`` (a file under the store)."""
    file = store.root / path
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(str(file), None, None, f"cannot read: {exc}")]
    return fake_placeholders(source, str(file)) + text_outside_blocks(store.env, source, str(file))


def template_files(store: TemplateStore, name: str, locale: str, parts: tuple[str, ...],
                   cache: dict[str, list[str]] | None = None) -> list[str]:
    """Every file one variant renders from, its layouts and macros included."""
    files: list[str] = []
    for part in parts:
        files += [p for p in sources(store, f"{name}/{locale}/{part}", cache) if p not in files]
    return files

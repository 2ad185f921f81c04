"""MyST markdown to plain Jupyter Markdown, for the Colab notebooks.

Jupyter and Colab render CommonMark with ``$...$`` math, nothing more: a MyST role
(``{cite}`song2021score` ``) or directive (```` ```{note} ````) would show as literal
text there. :func:`to_plain` rewrites one markdown cell of a chapter so that it reads as
the rendered book does:

- ``{cite}`a,b` `` becomes "(Song et al., 2021; Anderson, 1982)", linked to the
  book's bibliography page (``{cite:t}`` gives "Song et al. (2021)");
- ``{eq}`label` `` becomes "Eq. (N)" linked to the equation's anchor in the book, with
  the same N that the book prints (numbered through the whole book, in order);
  a labelled display equation ``$$ ... $$ (label)`` carries ``\\tag{N}``;
- ``{doc}``, ``{ref}``, ``{numref}`` become links to the book; ``{math}`` becomes
  ``$...$``; ``{py:func}`` and the other ``py:`` roles become code linked to the API page;
- admonitions become block quotes headed by their title, dropdowns become
  ``<details>``, figures become images, the bibliography and targets ``(name)=`` and
  ``%`` comment lines are dropped.

:func:`equation_numbers` gives the numbers (the book's browser test checks them against
the built HTML), :func:`leftover_myst` finds any MyST syntax that survived.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROLE = re.compile(r"\{(?P<name>[a-zA-Z][\w:-]*)\}`(?P<body>[^`]*)`")
FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:-]+)\}[ \t]*(?P<args>.*)$")
TARGET = re.compile(r"^\s*\([\w:.-]+\)=\s*$")
# A display equation's closing line with a label: "$$ (eq-label)"
LABELLED_CLOSE = re.compile(r"^(?P<indent>[ \t]*)\$\$[ \t]*\((?P<label>[\w:.-]+)\)[ \t]*$")

ADMONITIONS = {
    "note": "Note",
    "tip": "Tip",
    "hint": "Hint",
    "important": "Important",
    "warning": "Warning",
    "caution": "Caution",
    "attention": "Attention",
    "danger": "Danger",
    "error": "Error",
    "seealso": "See also",
}


@dataclass
class Context:
    """What a cell's conversion needs to know about the whole book."""

    book_url: str  # ends with "/": the rendered book, e.g. https://owner.github.io/repo/
    docname: str  # the page being converted, e.g. "book/03_reverse_sde"
    equations: dict[str, tuple[str, int]] = field(default_factory=dict)  # label -> (docname, N)
    citations: dict[str, str] = field(default_factory=dict)  # key -> "Song et al., 2021"
    titles: dict[str, str] = field(default_factory=dict)  # docname -> page title
    api_page: str = "book/api"

    def page_url(self, docname: str, anchor: str = "") -> str:
        return f"{self.book_url}{docname}.html" + (f"#{anchor}" if anchor else "")


# ---------------------------------------------------------------------- whole-book facts


def equation_numbers(text: str) -> list[str]:
    """The labels of a page's numbered equations, in the order the book numbers them:
    ``$$ ... $$ (label)`` blocks and ``{math}`` directives with a ``:label:`` option.
    The book numbers them through the whole book (:func:`book_equation_numbers`)."""
    labels = []
    in_math_directive = False
    for line in text.splitlines():
        m = LABELLED_CLOSE.match(line)
        if m:
            labels.append(m["label"])
        opened = FENCE_OPEN.match(line)
        if opened and opened["name"] == "math":
            in_math_directive = True
        elif in_math_directive and line.strip().startswith(":label:"):
            labels.append(line.split(":label:", 1)[1].strip())
            in_math_directive = False
        elif in_math_directive and not line.strip().startswith(":"):
            in_math_directive = False
    return labels


def bib_citations(bib_text: str) -> dict[str, str]:
    """``{key: "Song et al., 2021"}`` from a BibTeX file (author-year, as the book)."""
    out = {}
    for entry in re.finditer(r"@\w+\s*\{\s*([^,\s]+)\s*,(.*?)\n\}", bib_text, re.S):
        key, body = entry.group(1), entry.group(2)
        author = re.search(r"\bauthor\s*=\s*\{(.*?)\}\s*,?\s*\n", body, re.S)
        year = re.search(r"\byear\s*=\s*\{?(\d{4})", body)
        names = [a.strip() for a in re.split(r"\s+and\s+", author.group(1))] if author else []
        last = [n.split(",")[0].strip() if "," in n else n.split()[-1] for n in names if n]
        last = [re.sub(r"[{}]", "", n) for n in last]
        if not last:
            who = key
        elif len(last) == 1:
            who = last[0]
        elif len(last) == 2:
            who = f"{last[0]} and {last[1]}"
        else:
            who = f"{last[0]} et al."
        out[key] = f"{who}, {year.group(1) if year else 'n.d.'}"
    return out


def page_title(text: str) -> str:
    m = re.search(r"^# (.+)$", text, re.M)
    return m.group(1).strip() if m else ""


# ------------------------------------------------------------------------------ roles


def _split_title(body: str) -> tuple[str | None, str]:
    """``"text <target>"`` -> ("text", "target"); ``"target"`` -> (None, "target")."""
    m = re.fullmatch(r"\s*(.*?)\s*<([^>]+)>\s*", body, re.S)
    return (m.group(1), m.group(2)) if m else (None, body.strip())


def _resolve_doc(target: str, ctx: Context) -> str:
    if target.startswith("/"):
        return target.lstrip("/")
    base = ctx.docname.rsplit("/", 1)[0] if "/" in ctx.docname else ""
    return f"{base}/{target}" if base else target


def _role(m: re.Match, ctx: Context) -> str:
    name, body = m["name"], m["body"]
    if name in ("cite", "cite:p", "cite:ps", "cite:t", "cite:ts", "cite:author", "cite:year"):
        refs = ctx.page_url("book/references")
        parts = []
        for key in (k.strip() for k in body.split(",")):
            who_year = ctx.citations.get(key, key)
            who, _, year = who_year.rpartition(", ")
            if name.startswith("cite:t"):
                parts.append(f"[{who} ({year})]({refs})")
            else:
                parts.append(f"[{who_year}]({refs})")
        return "; ".join(parts) if name.startswith("cite:t") else f"({'; '.join(parts)})"
    if name == "eq":
        label = body.strip()
        doc, n = ctx.equations.get(label, (ctx.docname, 0))
        text = f"Eq. ({n})" if n else "the equation"
        if doc != ctx.docname:
            title = ctx.titles.get(doc, doc)
            number = re.match(r"^(\d+)\.\s", title)
            text += f" of chapter {number.group(1)}" if number else f" of {title}"
        return f"[{text}]({ctx.page_url(doc, 'equation-' + label)})"
    if name == "doc":
        title, target = _split_title(body)
        doc = _resolve_doc(target, ctx)
        return f"[{title or ctx.titles.get(doc, target)}]({ctx.page_url(doc)})"
    if name in ("ref", "numref"):
        title, target = _split_title(body)
        return title or target
    if name == "math":
        return f"${body}$"
    if name.startswith("py:") or name in ("func", "class", "mod", "meth", "attr", "data"):
        title, target = _split_title(body)
        target = target.lstrip("~.")
        shown = title or (target.rsplit(".", 1)[-1] if body.strip().startswith("~") else target)
        return f"[`{shown}`]({ctx.page_url(ctx.api_page, target)})"
    return body  # any other role: its text


def convert_roles(text: str, ctx: Context) -> str:
    return ROLE.sub(lambda m: _role(m, ctx), text)


# ------------------------------------------------------------------------- directives


def _directive_end(lines: list[str], start: int, fence: str) -> int:
    """Index of the line closing the directive opened at ``start`` (or len(lines))."""
    char, width = fence[0], len(fence)
    depth = 0
    for i in range(start + 1, len(lines)):
        stripped = lines[i].strip()
        opened = FENCE_OPEN.match(lines[i])
        if opened and opened["fence"][0] == char and len(opened["fence"]) == width:
            depth += 1
        elif stripped and set(stripped) == {char} and len(stripped) >= width:
            if depth == 0:
                return i
            depth -= 1
    return len(lines)


def _strip_options(body: list[str]) -> tuple[dict, list[str]]:
    options, i = {}, 0
    while i < len(body) and re.match(r"^\s*:[\w-]+:", body[i]):
        key, _, value = body[i].strip()[1:].partition(":")
        options[key] = value.strip()
        i += 1
    return options, body[i:]


def _quote(lines: list[str]) -> list[str]:
    return [f"> {line}".rstrip() for line in lines]


def _directive(name: str, args: str, body: list[str], ctx: Context) -> list[str]:
    options, body = _strip_options(body)
    inner = convert_lines(body, ctx)
    if name in ADMONITIONS or name == "admonition":
        title = args.strip() if name == "admonition" else ADMONITIONS[name]
        title = convert_roles(title, ctx)
        return _quote([f"**{title}**" if title else "", ""] + inner) if title else _quote(inner)
    if name in ("dropdown", "toggle"):
        summary = convert_roles(args.strip(), ctx) or "Show"
        return [f"<details><summary>{summary}</summary>", ""] + inner + ["", "</details>"]
    if name in ("figure", "image"):
        src = args.strip()
        src = src if re.match(r"^[a-z]+://", src) else ctx.book_url + _resolve_doc(src, ctx)
        caption = " ".join(line.strip() for line in inner).strip()
        alt = options.get("alt", caption or "figure")
        return [f"![{alt}]({src})"] + ([f"*{caption}*"] if caption else [])
    if name == "math":
        label = options.get("label")
        tag = [f"\\tag{{{ctx.equations[label][1]}}}"] if label in ctx.equations else []
        return ["$$"] + body + tag + ["$$"]
    if name in ("bibliography", "tableofcontents", "contents"):
        return []
    if name == "code-block" or name == "code":
        return [f"```{args.strip()}"] + body + ["```"]
    return inner


def convert_lines(lines: list[str], ctx: Context) -> list[str]:
    """Convert a list of MyST lines (a cell, or a directive's body)."""
    out: list[str] = []
    i = 0
    in_math = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        opened = FENCE_OPEN.match(line) if not in_math else None
        if opened:
            end = _directive_end(lines, i, opened["fence"])
            body = [l[len(opened["indent"]):] if l.startswith(opened["indent"]) else l for l in lines[i + 1 : end]]
            converted = _directive(opened["name"], opened["args"], body, ctx)
            out += [opened["indent"] + l if l else l for l in converted]
            i = end + 1
            continue
        closing = LABELLED_CLOSE.match(line) if in_math or stripped.startswith("$$") else None
        if closing:
            label = closing["label"]
            n = ctx.equations.get(label, (ctx.docname, 0))[1]
            out.append(f"{closing['indent']}\\tag{{{n}}}" if n else "")
            out.append(f"{closing['indent']}$$")
            in_math = False
            i += 1
            continue
        if stripped.startswith("$$"):
            rest = stripped[2:]
            closes_inline = rest.rstrip().endswith("$$") and len(rest.strip()) > 2
            if not in_math and not closes_inline:
                in_math = True
            elif in_math:
                in_math = False
            out.append(line)
            i += 1
            continue
        if not in_math and (TARGET.match(line) or re.match(r"^\s*%", line)):
            i += 1
            continue
        out.append(line if in_math else convert_roles(line, ctx))
        i += 1
    return out


def to_plain(text: str, ctx: Context) -> str:
    """One markdown cell of page ``ctx.docname`` as plain Jupyter Markdown."""
    return "\n".join(convert_lines(text.splitlines(), ctx)).strip("\n")


def leftover_myst(text: str) -> list[str]:
    """The MyST roles, directives and targets still in ``text`` (empty when clean)."""
    found = [m.group(0) for m in ROLE.finditer(text)]
    found += [line for line in text.splitlines() if FENCE_OPEN.match(line) or TARGET.match(line)]
    found += [line for line in text.splitlines() if LABELLED_CLOSE.match(line)]
    return found


def _page_texts(root: Path, pages: list[str]) -> dict[str, str]:
    """The source text of each page that exists, by docname, in toc order."""
    texts = {}
    for page in pages:
        path = root / page
        path = path if path.suffix else path.with_suffix(".md")
        if path.is_file():
            texts[page] = path.read_text(encoding="utf-8")
    return texts


def _numbered(texts: dict[str, str]) -> dict[str, dict[str, int]]:
    out, n = {}, 0
    for page, text in texts.items():
        labels = equation_numbers(text)
        out[page] = {label: n + i for i, label in enumerate(labels, start=1)}
        n += len(labels)
    return out


def book_equation_numbers(root: Path, pages: list[str]) -> dict[str, dict[str, int]]:
    """``{docname: {label: N}}``: the book numbers labelled equations consecutively
    through its pages in toc order (the first equation of chapter 2 follows the last of
    chapter 1), as the built HTML shows them."""
    return _numbered(_page_texts(root, pages))


def book_context(root: Path, docname: str, book_url: str, pages: list[str]) -> Context:
    """The context for converting page ``docname``: equation numbers, citations and
    titles gathered from every page of the toc (``pages``, docnames)."""
    ctx = Context(book_url=book_url, docname=docname)
    bib = root / "references.bib"
    if bib.is_file():
        ctx.citations = bib_citations(bib.read_text(encoding="utf-8"))
    texts = _page_texts(root, pages)
    numbers = _numbered(texts)
    # the page's own labels last, so that they win over a label repeated elsewhere
    for page in sorted(texts, key=lambda p: p == docname):
        ctx.titles[page] = page_title(texts[page])
        for label, n in numbers[page].items():
            ctx.equations[label] = (page, n)
    return ctx

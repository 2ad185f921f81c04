"""House style of the chapters, checked by ``tests/test_chapter_style.py`` and applied by

    python book/_tools/style.py            # format code cells, link API names in the prose
    python book/_tools/style.py --check    # exit 1 where a chapter breaks the style

- Code cells are at most 79 columns wide: the rendered book shows 79 columns without
  scrolling. Formatting runs ``ruff format --line-length 79`` on every chapter (through
  ``jupytext --pipe``), then moves comments that still overflow onto lines of their own,
  wrapped.
- Inline code in the prose that names a public object of the companion
  (`` `ode_sampling.dpm_solver` ``, `` `companion.toy.exact_score` ``) is a link to its entry in
  the API reference (``book/api.md``): ``{py:obj}`ode_sampling.dpm_solver <companion.ode_sampling.dpm_solver>```.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import course  # noqa: E402

MAX_COLUMNS = 79
# `module.name` or `companion.module.name` (optionally `.attr`), not already inside a role
INLINE = re.compile(
    r"(?<![}`\w])`(?P<name>(?:companion\.)?(?P<path>[a-z_]+(?:\.[A-Za-z_][\w]*)+)(?:\([^`]*\))?)`(?!`)"
)


def resolve(path: str) -> str | None:
    """``"ode_sampling.dpm_solver"`` -> ``"companion.ode_sampling.dpm_solver"`` when that is a public
    object documented in the API page (module attribute, class or method), else None."""
    parts = path.split(".")
    if any(p.startswith("_") for p in parts):
        return None
    try:
        obj = importlib.import_module(f"companion.{parts[0]}")
    except ImportError:
        return None
    for part in parts[1:]:
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    if not (callable(obj) or isinstance(obj, type)):
        return None
    return f"companion.{path}"


def _prose_lines(text: str):
    """(index, line) of the markdown lines of a jupytext MyST chapter outside code cells,
    code fences and display math."""
    fence = None
    math = False
    lines = text.splitlines()
    header_end = -1
    if lines and lines[0].strip() == "---":  # the jupytext header
        header_end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), len(lines))
    for i, line in enumerate(lines):
        stripped = line.strip()
        if i <= header_end:
            continue
        if fence:
            if stripped.startswith(fence) and set(stripped) <= set(fence[0]):
                fence = None
            continue
        m = re.match(r"^(`{3,}|~{3,})", stripped)
        if m:
            fence = m.group(1)
            continue
        if stripped.startswith("$$"):
            if not (len(stripped) > 4 and stripped.rstrip().endswith("$$") and stripped != "$$"):
                math = not math
            continue
        if math:
            continue
        yield i, line


def link_api(text: str) -> str:
    lines = text.splitlines()
    for i, line in _prose_lines(text):
        def sub(m):
            target = resolve(m["path"])
            return f"{{py:obj}}`{m['name']} <{target}>`" if target else m.group(0)

        lines[i] = INLINE.sub(sub, line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def _wrap(indent: str, text: str) -> list[str]:
    width = MAX_COLUMNS - len(indent) - 2
    return [f"{indent}# {part}" for part in textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)]


def fix_comments(code: str) -> str:
    """Comments that make a line longer than 79 columns: a trailing comment moves onto
    its own line above the code, and a block of comment lines is re-wrapped as one
    paragraph, both at the code's indentation. Code itself is left to the formatter."""
    try:
        comments = {
            tok.start[0]: tok
            for tok in tokenize.generate_tokens(io.StringIO(code).readline)
            if tok.type == tokenize.COMMENT
        }
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code  # IPython magics or half-written code: leave it alone
    lines = code.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line, tok = lines[i], comments.get(i + 1)
        indent = line[: len(line) - len(line.lstrip())]
        if tok is not None and not line[: tok.start[1]].strip():
            # a block of comment lines at one indentation
            j = i
            while j < len(lines) and comments.get(j + 1) and not lines[j][: comments[j + 1].start[1]].strip() \
                    and lines[j].startswith(indent + "#"):
                j += 1
            block = lines[i:j]
            if any(len(b) > MAX_COLUMNS for b in block):
                out += _wrap(indent, " ".join(b.strip().lstrip("#").strip() for b in block))
            else:
                out += block
            i = j
            continue
        if tok is not None and len(line) > MAX_COLUMNS:
            out += _wrap(indent, tok.string.lstrip("#").strip()) + [line[: tok.start[1]].rstrip()]
        else:
            out.append(line)
        i += 1
    return "\n".join(out) + ("\n" if code.endswith("\n") else "")


def _split_string(body: str, width: int) -> tuple[str, str] | None:
    """Split the text of a string literal at a space before ``width`` that is not inside
    an f-string's braces; None when there is no such space."""
    depth, best = 0, None
    for i, ch in enumerate(body[:width]):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == " " and depth == 0 and i > 10:
            best = i
    return (body[: best + 1], body[best + 1 :]) if best else None


STRING_LINE = re.compile(r'^(?P<indent>\s*)(?P<key>\w+=)?(?P<prefix>[rfb]{0,2})"(?P<body>(?:[^"\\]|\\.)*)"(?P<tail>,?)$')
DOCSTRING_LINE = re.compile(r'^(?P<indent>\s*)"""(?P<body>.*?)(?P<close>""")?$')


def fix_long_strings(code: str) -> str:
    """What the formatter cannot shorten: a one-line string argument becomes two
    adjacent literals, and a docstring line is wrapped, both within 79 columns."""
    out: list[str] = []
    in_doc = False
    for line in code.splitlines():
        if len(line) <= MAX_COLUMNS:
            out.append(line)
            if line.count('"""') % 2:
                in_doc = not in_doc
            continue
        m = STRING_LINE.match(line)
        d = DOCSTRING_LINE.match(line)
        if m and not in_doc:
            indent, key, prefix = m["indent"], m["key"] or "", m["prefix"]
            inner = indent + ("    " if key else "")
            parts = _split_string(m["body"], MAX_COLUMNS - len(inner) - len(prefix) - 3)
            if parts is None:
                out.append(line)
                continue
            lines = [f'{inner}{prefix}"{parts[0]}"', f'{inner}{prefix}"{parts[1]}"']
            if key:
                out += [f"{indent}{key}("] + lines + [f"{indent}){m['tail']}"]
            else:
                lines[-1] += m["tail"]
                out += lines
        elif d and not in_doc:
            indent, text = d["indent"], d["body"]
            wrapped = textwrap.wrap(text, MAX_COLUMNS - len(indent) - 3, break_on_hyphens=False, break_long_words=False)
            out.append(f'{indent}"""{wrapped[0]}')
            out += [f"{indent}{w}" for w in wrapped[1:]]
            if d["close"]:
                out.append(f'{indent}"""')
            else:
                in_doc = True
        elif in_doc and '"""' not in line:
            indent = line[: len(line) - len(line.lstrip())]
            out += [
                f"{indent}{w}"
                for w in textwrap.wrap(line.strip(), MAX_COLUMNS - len(indent), break_on_hyphens=False, break_long_words=False)
            ]
        else:
            out.append(line)
            if line.count('"""') % 2:
                in_doc = not in_doc
    return "\n".join(out) + ("\n" if code.endswith("\n") else "")


def _fix_cells(text: str) -> str:
    def fix(m):
        head, body, close = m.group(1), m.group(2), m.group(3)
        options = ""
        if body.startswith("---\n"):
            end = body.index("\n---\n", 3) + 5
            options, body = body[:end], body[end:]
        else:
            while body.startswith(":"):
                line, _, body = body.partition("\n")
                options += line + "\n"
        return head + options + fix_long_strings(fix_comments(body)) + close

    return CODE_CELL.sub(fix, text)


CODE_CELL = re.compile(r"(^```\{code-cell\}[^\n]*\n)(.*?)(^```[ \t]*$)", re.S | re.M)


def format_chapter(source: Path) -> None:
    """:func:`fix_comments` on every code cell, then ruff format (79 columns) through
    jupytext, then :func:`fix_comments` again for what the formatter left too wide."""
    bindir = Path(sys.executable).parent
    ruff = str(bindir / "ruff") if (bindir / "ruff").exists() else "ruff"
    jupytext = str(bindir / "jupytext") if (bindir / "jupytext").exists() else "jupytext"
    pipe = [jupytext, "--quiet", "--pipe", f"{ruff} format --quiet --line-length {MAX_COLUMNS} {{}}", str(source)]
    text = source.read_text(encoding="utf-8")
    header = text.split("\n---\n", 1)[0]
    source.write_text(_fix_cells(text), encoding="utf-8")
    subprocess.run(pipe, check=True)
    _, sep, rest = _fix_cells(source.read_text(encoding="utf-8")).partition("\n---\n")
    source.write_text(header + sep + rest, encoding="utf-8")  # jupytext adds its version


def problems(source: Path) -> list[str]:
    text = source.read_text(encoding="utf-8")
    out = []
    nb = course.read_myst(text)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            if len(line) > MAX_COLUMNS:
                out.append(f"{source.name}: code line of {len(line)} columns: {line[:60]}...")
    for i, line in _prose_lines(text):
        for m in INLINE.finditer(line):
            if resolve(m["path"]):
                out.append(f"{source.name}:{i + 1}: `{m['name']}` is not linked to the API page")
    return out


def chapters() -> list[Path]:
    return sorted(p for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        found = [p for source in chapters() for p in problems(source)]
        for p in found:
            print(p, file=sys.stderr)
        return 1 if found else 0
    for source in chapters():
        format_chapter(source)
        text = source.read_text(encoding="utf-8")
        new = link_api(text)
        if new != text:
            source.write_text(new, encoding="utf-8")
            print(f"linked the API names of {source.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Split a SQL script into statements, the way PostgreSQL's lexer sees them.

Respects single-quoted strings (with ``''``), ``E''`` strings (with backslash escapes),
double-quoted identifiers, dollar quoting (``$$`` and ``$tag$``), ``--`` and nested
``/* */`` comments. Each statement keeps its exact text and the 1-based line where it
starts, so errors can name the line in the file. ``"".join`` of the pieces' ``text`` plus
separators gives the original script back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$")


@dataclass(frozen=True, slots=True)
class Statement:
    text: str  # the statement without its terminating semicolon
    line: int  # 1-based line of its first non-blank character
    start: int  # offset of text in the script


class SplitError(ValueError):
    """The script ends inside a string, identifier, dollar quote or comment."""


def split_statements(script: str) -> list[Statement]:
    """Return the non-empty statements of ``script`` (comment-only pieces are dropped)."""
    out: list[Statement] = []
    i, n = 0, len(script)
    start = 0
    has_code = False
    paren = 0
    while i < n:
        c = script[i]
        if c == "-" and script.startswith("--", i):
            j = script.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and script.startswith("/*", i):
            i = _skip_block_comment(script, i)
            continue
        if c == "'":
            escaped = i > 0 and script[i - 1] in "eE" and (i < 2 or not _is_ident(script[i - 2]))
            i = _skip_string(script, i, escaped)
            has_code = True
            continue
        if c == '"':
            j = script.find('"', i + 1)
            while j >= 0 and script.startswith('""', j):
                j = script.find('"', j + 2)
            if j < 0:
                raise SplitError(f"unterminated quoted identifier at line {_line(script, i)}")
            i = j + 1
            has_code = True
            continue
        if c == "$" and (i == 0 or not _is_ident(script[i - 1])):
            m = _DOLLAR_TAG.match(script, i)
            if m:
                tag = m.group(0)
                j = script.find(tag, m.end())
                if j < 0:
                    raise SplitError(f"unterminated dollar quote {tag} at line {_line(script, i)}")
                i = j + len(tag)
                has_code = True
                continue
        if c == "(":
            paren += 1
        elif c == ")":
            paren = max(0, paren - 1)
        elif c == ";" and paren == 0:
            if has_code:
                out.append(_make(script, start, i))
            start = i + 1
            has_code = False
            i += 1
            continue
        if not c.isspace():
            has_code = True
        i += 1
    if has_code:
        out.append(_make(script, start, n))
    return out


def _make(script: str, start: int, end: int) -> Statement:
    text = script[start:end]
    # Skip leading whitespace and comments to report the line of the first real token.
    k = start
    while k < end:
        if script[k].isspace():
            k += 1
        elif script.startswith("--", k):
            j = script.find("\n", k)
            k = end if j < 0 else j + 1
        elif script.startswith("/*", k):
            k = _skip_block_comment(script, k)
        else:
            break
    return Statement(text=text, line=_line(script, k), start=start)


def _skip_block_comment(script: str, i: int) -> int:
    depth, i = 1, i + 2
    while depth and i < len(script):
        if script.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif script.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    if depth:
        raise SplitError("unterminated /* comment */")
    return i


def _skip_string(script: str, i: int, escaped: bool) -> int:
    j = i + 1
    n = len(script)
    while j < n:
        ch = script[j]
        if escaped and ch == "\\":
            j += 2
            continue
        if ch == "'":
            if script.startswith("''", j):
                j += 2
                continue
            return j + 1
        j += 1
    raise SplitError(f"unterminated string literal at line {_line(script, i)}")


def _is_ident(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or ch == "$"


def _line(script: str, offset: int) -> int:
    return script.count("\n", 0, offset) + 1

"""Split a SQL script into statements with PostgreSQL's own lexer (pglast's scanner).

The scanner knows strings (``''``, ``E''`` with backslashes, ``U&''``), quoted identifiers,
dollar quoting, ``--`` and nested ``/* */`` comments. On top of its tokens a ``;`` ends a
statement only outside parentheses and outside a SQL-standard ``BEGIN ATOMIC ... END``
function body (the rule psql uses). Each statement keeps its exact text, the 1-based line of
its first token and the comments before it (where lint waivers live).
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast.parser import ParseError, Token, scan

_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
# The scanner's wording, in the words a person editing the file looks for.
_MESSAGES = {
    "unterminated quoted string": "unterminated string literal",
    "unterminated quoted identifier": "unterminated quoted identifier",
    "unterminated dollar-quoted string": "unterminated dollar quote",
    "unterminated /* comment": "unterminated /* comment */",
}


@dataclass(frozen=True, slots=True)
class Statement:
    text: str  # from just after the previous ';' up to (not including) its own ';'
    line: int  # 1-based line of its first token
    start: int  # offset of text in the script
    comments: tuple[str, ...] = ()  # comments between the previous ';' and its first token
    code: str = ""  # text from its first token on (no leading comments or blank lines)


class SplitError(ValueError):
    """The script ends inside a string, identifier, dollar quote or comment."""


def split_statements(script: str) -> list[Statement]:
    """Return the non-empty statements of ``script`` (comment-only pieces are dropped)."""
    if "\x00" in script:
        raise SplitError(f"NUL character at line {_line(script, script.index(chr(0)))}")
    try:
        tokens = scan(script)
    except ParseError as exc:
        message, location = str(exc.args[0]), int(exc.args[1]) if len(exc.args) > 1 else 0
        reason = message.split(" at or near ", 1)[0]
        raise SplitError(f"{_MESSAGES.get(reason, reason)} at line {_line(script, location)}") from None
    out: list[Statement] = []
    piece: list[Token] = []
    start = paren = 0
    body = _BodyDepth()
    for tok in tokens:
        if tok.name == "ASCII_59" and paren == 0 and body.depth == 0:
            _emit(out, script, piece, start, tok.start)
            piece, start = [], tok.end + 1
            body = _BodyDepth()
            continue
        if tok.name == "ASCII_40":
            paren += 1
        elif tok.name == "ASCII_41":
            paren = max(0, paren - 1)
        elif tok.name not in _COMMENTS:
            body.see(tok.name)
        piece.append(tok)
    _emit(out, script, piece, start, len(script))
    return out


class _BodyDepth:
    """psql's rule: inside CREATE [OR REPLACE] FUNCTION|PROCEDURE, BEGIN ... END nests."""

    def __init__(self) -> None:
        self.head: list[str] = []
        self.depth = 0

    def see(self, name: str) -> None:
        if len(self.head) < 4:
            self.head.append(name)
        if not self._is_routine():
            return
        if name == "BEGIN_P" or (name == "CASE" and self.depth):
            self.depth += 1
        elif name == "END_P" and self.depth:
            self.depth -= 1

    def _is_routine(self) -> bool:
        h = self.head
        if not h or h[0] != "CREATE":
            return False
        if h[1:2] and h[1] in ("FUNCTION", "PROCEDURE"):
            return True
        return h[1:3] == ["OR", "REPLACE"] and h[3:4] != [] and h[3] in ("FUNCTION", "PROCEDURE")


def _emit(out: list[Statement], script: str, piece: list[Token], start: int, end: int) -> None:
    code = [t for t in piece if t.name not in _COMMENTS]
    if not code:
        return
    first = code[0].start
    comments = tuple(script[t.start:t.end + 1] for t in piece if t.start < first)
    out.append(Statement(text=script[start:end], line=_line(script, first), start=start,
                         comments=comments, code=script[first:end]))


def _line(script: str, offset: int) -> int:
    return script.count("\n", 0, offset) + 1

"""``[filters]``: rename requested files before they are served.

Rules are tried in file order and the first match wins. A pattern matches the
whole normalized request path (see :func:`pybootd.tftp.paths.normalize_request_path`),
case-sensitively: ``*`` matches any run of characters, ``/`` included, ``?``
exactly one character, and every other character itself. In the target,
``{filename}`` is replaced with the requested path. A target in brackets,
``[file]``, names a local file whose first non-empty line (with
``{filename}`` expanded) is the name to serve.

A target is confined where it can reach (see :func:`split_confined`): the
client chooses ``{filename}``, so an absolute target with ``{filename}``
may only reach inside the folder the administrator wrote before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FILENAME_VAR = "{filename}"


@dataclass(frozen=True)
class Rule:
    pattern: str
    target: str
    indirect: bool
    line: int = 0


@dataclass(frozen=True)
class Match:
    """The rule that matched and its target with ``{filename}`` expanded."""

    rule: Rule
    target: str


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Wildcard pattern -> anchored regular expression."""
    out = []
    for char in pattern:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


class FilterSet:
    """The ordered rules of ``[filters]``."""

    def __init__(self, rules: tuple[Rule, ...] | list[Rule]) -> None:
        self._rules = [(rule, compile_pattern(rule.pattern)) for rule in rules]

    def __bool__(self) -> bool:
        return bool(self._rules)

    def match(self, path: str) -> Match | None:
        """The first rule whose pattern matches all of *path*."""
        for rule, regex in self._rules:
            if regex.fullmatch(path):
                return Match(rule, expand(rule.target, path))
        return None


def expand(template: str, filename: str) -> str:
    """Replace ``{filename}`` (the only variable) in *template*."""
    return template.replace(FILENAME_VAR, filename)


def indirect_template(content: str) -> str | None:
    """The name an indirection file holds, ``{filename}`` not yet expanded:
    its first non-empty line that is not a ``#`` comment."""
    for line in content.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped
    return None


def indirect_name(content: str, filename: str) -> str | None:
    """The name an indirection file holds, with ``{filename}`` expanded."""
    template = indirect_template(content)
    return None if template is None else expand(template, filename)


def split_confined(template: str, filename: str) -> tuple[str, str] | None:
    """Where an expanded *template* may reach: ``(folder, rest)``, or None
    for a template without ``{filename}`` (a fixed name the administrator
    wrote).

    *folder* is the template up to the last ``/`` before the first
    ``{filename}`` (``""`` when there is none); *rest* is the remainder,
    expanded: the part the client chose, to be normalized like a request
    and opened inside *folder*. ``/srv/pub/{filename}`` with ``a/b`` gives
    ``("/srv/pub/", "a/b")``; ``/srv/img-{filename}.cfg`` gives
    ``("/srv/", "img-a/b.cfg")``.
    """
    at = template.find(FILENAME_VAR)
    if at < 0:
        return None
    cut = template.rfind("/", 0, at) + 1
    return template[:cut], expand(template[cut:], filename)

"""A line-tracking INI reader.

ConfigParser forgets where a value came from; every configuration error must
name ``FILE:LINE``, so pybootd reads the file itself. The syntax is the subset
of ConfigParser's that the original pybootd documented:

* ``[section]`` headers (names are case-insensitive),
* ``key = value`` entries (split on the first ``=`` only, so MAC addresses
  with ``:`` and filter patterns stay whole),
* whole-line comments starting with ``;`` or ``#``, and blank lines,
* inline comments: a ``;`` or ``#`` that follows whitespace ends the value
  or the section header (ConfigParser's ``inline_comment_prefixes`` rule),
  so ``http://host/boot.ipxe#x`` or ``a;b`` stay whole,
* quoted values: a value that starts with ``"`` or ``'`` ends at the same
  quote; the quotes are removed and what they hold is kept as it is
  (``" ; "``), and only a comment may follow.

Only :mod:`pybootd.config` uses this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pybootd.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    """One ``key = value`` line."""

    key: str
    value: str
    line: int


@dataclass
class Section:
    """One ``[name]`` block; ``entries`` keep the file order."""

    name: str
    line: int
    entries: list[Entry] = field(default_factory=list)


def parse_ini(text: str, path: str) -> dict[str, Section]:
    """Parse *text* (read from *path*) into sections, in file order."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if raw[0] in " \t":
            raise ConfigError(
                "indented line: continuation lines are not supported "
                "(expected 'key = value' starting in column 1)",
                path=path,
                line=number,
            )
        if stripped.startswith("["):
            header = _strip_comment(stripped).strip()
            current = _section_header(header, number, path, sections)
            continue
        if current is None:
            raise ConfigError(
                f"{stripped!r} is outside any section (expected a [section] header first)",
                path=path,
                line=number,
            )
        current.entries.append(_entry(stripped, number, path, current))
    return sections


def _section_header(
    stripped: str, number: int, path: str, sections: dict[str, Section]
) -> Section:
    if not stripped.endswith("]") or len(stripped) < 3:
        raise ConfigError(
            f"malformed section header {stripped!r} (expected [name])", path=path, line=number
        )
    name = stripped[1:-1].strip().lower()
    if name in sections:
        raise ConfigError(
            f"section [{name}] appears twice (first at line {sections[name].line}; "
            "expected each section once)",
            path=path,
            line=number,
        )
    section = Section(name, number)
    sections[name] = section
    return section


def _entry(stripped: str, number: int, path: str, section: Section) -> Entry:
    key, sep, value = stripped.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"{stripped!r} is not an entry (expected 'key = value')",
            path=path,
            line=number,
            section=section.name,
        )
    for previous in section.entries:
        if previous.key.lower() == key.lower():
            raise ConfigError(
                f"set twice (first at line {previous.line}; expected each key once)",
                path=path,
                line=number,
                section=section.name,
                key=key,
            )
    try:
        return Entry(key, _value(value), number)
    except ValueError as exc:
        raise ConfigError(str(exc), path=path, line=number, section=section.name,
                          key=key) from None


def _strip_comment(text: str) -> str:
    """*text* up to its first ``;`` or ``#`` that follows whitespace."""
    for index, char in enumerate(text):
        if char in ";#" and index > 0 and text[index - 1] in " \t":
            return text[:index]
    return text


def _value(raw: str) -> str:
    """The value after ``=``: inline comment removed, quotes unwrapped."""
    text = raw.strip()
    if not text or text[0] not in "\"'":
        return _strip_comment(raw).strip()
    quote = text[0]
    end = text.find(quote, 1)
    if end < 0:
        raise ValueError(f"no closing {quote} in {text!r} (expected {quote}value{quote})")
    rest = text[end + 1 :].strip()
    if rest and rest[0] not in ";#":
        raise ValueError(f"{rest!r} after the closing {quote} (expected nothing, or a comment "
                         "starting with ; or #)")
    return text[1:end]

"""A line-tracking INI reader.

ConfigParser forgets where a value came from; every configuration error must
name ``FILE:LINE``, so pybootd reads the file itself. The syntax is the subset
of ConfigParser's that the original pybootd documented:

* ``[section]`` headers (names are case-insensitive),
* ``key = value`` entries (split on the first ``=`` only, so MAC addresses
  with ``:`` and filter patterns stay whole),
* whole-line comments starting with ``;`` or ``#``, and blank lines.

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
            current = _section_header(stripped, number, path, sections)
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
    return Entry(key, value.strip(), number)

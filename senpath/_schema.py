"""Typed schema of settings: each key's type and range, and one-line messages that say the fix.

The tables of :mod:`senpath.config` are made of :class:`Setting` rows; :class:`Problems` collects what
is wrong with a settings file so that all of it is reported at once, one line per problem, each line
naming the file, the full dotted key (``assay.my-ki67.marker[0].threshold_od``) and what to write.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dotted(*parts: str) -> str:
    """The TOML dotted key of nested keys, quoting parts that are not bare keys (``assay."p16+ki67"``).

    A part that already carries an array index (``marker[0]``) is kept as written.
    """
    out = []
    for part in parts:
        if _BARE_KEY.match(part) or re.match(r"^[A-Za-z0-9_-]+\[\d+\]$", part):
            out.append(part)
        else:
            out.append(json.dumps(part))
    return ".".join(out)


def shown(value: Any) -> str:
    """``value`` written as in a TOML file (strings in double quotes, ``true``/``false``), shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {shown(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(shown(v) for v in value) + "]"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    text = " ".join(text.split())  # a message is one line, whatever the value holds
    return text if len(text) <= 60 else text[:57] + "..."


def is_number(value: Any) -> bool:
    """A real number (int or float, numpy scalars included) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Setting:
    """Type and allowed values of one setting; :meth:`check` says what is wrong and what to write.

    Attributes
    ----------
    kind : ``number``, ``bool``, ``string``, ``choice`` or ``numbers`` (a list of numbers).
    unit : unit (or quantity) of a number, as the message names it (``µm``, ``µm/px``, ``OD``).
    low, high : inclusive range of a number (of each number of a list); ``low_open`` excludes ``low``.
    choices : allowed values of a ``choice``.
    length : number of items of a ``numbers`` list.
    increasing : the items of a ``numbers`` list must increase strictly.
    pattern : regular expression a ``string`` must match in full; ``pattern_hint`` says it in words.
    example : a valid value, as written in a TOML file.
    """

    kind: Literal["number", "bool", "string", "choice", "numbers"]
    unit: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    length: int | None = None
    increasing: bool = False
    pattern: str | None = None
    pattern_hint: str = ""
    example: str = ""

    def _range(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " and ".join(parts)

    def _in_range(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or x <= self.high

    def _eg(self) -> str:
        return f", e.g. {self.example}" if self.example else ""

    def check(self, value: Any) -> str | None:
        """What is wrong with ``value``, phrased to follow ``"`key` = value "``; ``None`` if valid."""
        if self.kind == "number":
            what = f"give {self.unit} {self._range()}".replace("give  ", "give ") + self._eg()
            if not is_number(value):
                return f"is not a number: {what}"
            return None if self._in_range(float(value)) else f"is out of range: {what}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                return "is not a boolean: write true or false, without quotes"
            return None
        if self.kind == "string":
            if not isinstance(value, str) or not value.strip():
                return f"is not a text: write it in double quotes{self._eg()}"
            if self.pattern and not re.fullmatch(self.pattern, value):
                return f"is not valid: {self.pattern_hint}{self._eg()}"
            return None
        if self.kind == "choice":
            options = ", ".join(json.dumps(c) for c in self.choices)
            if isinstance(value, str) and value in self.choices:
                return None
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            hint = f"did you mean {json.dumps(close[0])}? " if close else ""
            return f"is not one of the choices: {hint}(use one of {options})"
        # a list of numbers
        n = f"{self.length} " if self.length else ""
        order = ", increasing" if self.increasing else ""
        what = f"give a list of {n}numbers{order}, each {self.unit} {self._range()}{self._eg()}"
        if not isinstance(value, (list, tuple)) or not all(is_number(v) for v in value):
            return f"is not a list of numbers: {what}"
        if self.length is not None and len(value) != self.length:
            return f"has {len(value)} numbers, not {self.length}: {what}"
        if not all(self._in_range(float(v)) for v in value):
            return f"is out of range: {what}"
        if self.increasing and any(b <= a for a, b in zip(value, value[1:], strict=False)):
            return f"is not increasing: {what}"
        return None


class Problems:
    """The problems found in one settings source, one line each: ``<source>: `<key>` <problem>``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, key: str, problem: str) -> None:
        """Record that setting ``key`` (full dotted key) has ``problem`` (which says the fix)."""
        self.lines.append(f"{self.source}: `{key}` {problem}")

    def add_value(self, key: str, value: Any, problem: str) -> None:
        """Record a bad value: ``<source>: `<key>` = <value> <problem>``."""
        self.add(key, f"= {shown(value)} {problem}")

    def note(self, problem: str) -> None:
        """Record a problem that no single key holds (still prefixed with the source)."""
        self.lines.append(f"{self.source}: {problem}")

    def check(self, key: str, value: Any, setting: Setting) -> bool:
        """Check ``value`` against ``setting``; record any problem. True when it is valid."""
        problem = setting.check(value)
        if problem is not None:
            self.add_value(key, value, problem)
        return problem is None

    def unknown_keys(
        self,
        where: Sequence[str],
        table: Mapping[str, Any],
        known: Iterable[str],
        what: str = "key",
    ) -> None:
        """Record each key of ``table`` that is not in ``known``, with the closest known key."""
        known = list(known)
        listing = ", ".join(known)
        for key in map(str, table):
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f": did you mean `{close[0]}`?" if close else ""
            self.add(dotted(*where, key), f"is not a known {what}{hint} (known {what}s: {listing})")

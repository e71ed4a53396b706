"""Problems found in a policy file, and how a place in the file is named in a sentence."""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass

from tessera.core.errors import PolicyError

KeyPath = tuple[str | int, ...]


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (error) or worth a second look (warning) in a policy file.

    ``line`` is 1-based, or ``None`` when the problem is about the file as a whole.
    ``message`` is one sentence without the file name; ``render`` prefixes file and line.
    """

    severity: Severity
    message: str
    line: int | None = None
    path: KeyPath = ()

    def render(self, source: str) -> str:
        if self.line is None:
            return f"{source}: {self.message}"
        return f"{source}, line {self.line}: {self.message}"


class PolicyFileError(PolicyError):
    """A policy file cannot be used; ``problems`` lists every error found, the message the first."""

    def __init__(self, message: str, *, source: str, problems: tuple[Problem, ...]) -> None:
        super().__init__(message)
        self.source = source
        self.problems = problems


def quoted(value: object) -> str:
    return f'"{value}"'


def subject(path: KeyPath) -> str:
    """Name the place at ``path`` the way a person reading the file would, e.g. ``field "email" of
    dataset "customers"``."""
    if not path:
        return "the file"
    last = path[-1]
    if isinstance(last, int):
        return f"item {last + 1} of {subject(path[:-1])}"
    if path[0] == "datasets" and len(path) >= 2:
        dataset = quoted(path[1])
        if len(path) == 2:
            return f"dataset {dataset}"
        if len(path) == 3:
            return f"{quoted(last)} of dataset {dataset}"
        if path[2] == "fields" and len(path) == 4:
            return f"field {quoted(last)} of dataset {dataset}"
        if path[2] == "fields" and len(path) == 5:
            return f"{quoted(last)} of field {quoted(path[3])} in dataset {dataset}"
    return quoted(last)


def where(path: KeyPath) -> str:
    """Name the section that *contains* keys, for sentences such as 'not a known key {where}'."""
    if not path:
        return "at the top level"
    if path[0] == "datasets" and len(path) == 2:
        return f"in dataset {quoted(path[1])}"
    if path[0] == "datasets" and len(path) == 4 and path[2] == "fields":
        return f"in field {quoted(path[3])} of dataset {quoted(path[1])}"
    return f"under {quoted(path[-1])}"


def describe_value(value: object) -> str:
    """What a value *is*, for '(got ...)' — short, and without echoing long text."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the yes/no value {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the text {quoted(shown)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return 'a group of "key: value" lines'
    if isinstance(value, _dt.date | _dt.datetime):
        return "a date"
    return "a value of another kind"

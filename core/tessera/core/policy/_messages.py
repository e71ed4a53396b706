"""Turn pydantic's validation errors into one plain sentence each, with the line they refer to."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tessera.core.policy._problems import KeyPath, Problem, Severity, describe_value, quoted, subject, where
from tessera.core.policy._schema import FIELD_TYPES, TIERS, home_of_key, model_at

_EXPECTED = {
    "float_type": "a number",
    "int_type": "a whole number",
    "string_type": "text",
    "bool_type": "true or false",
    "dict_type": 'a group of indented "name: ..." lines',
    "model_type": 'a group of indented "key: value" lines',
    "model_attributes_type": 'a group of indented "key: value" lines',
    "list_type": 'a list (one "- item" per line)',
}

_CHOICES = {"tier": TIERS, "type": FIELD_TYPES}


def line_for(path: KeyPath, lines: Mapping[KeyPath, int]) -> int | None:
    """The line of ``path``, or of its nearest ancestor present in the file (for missing keys)."""
    for cut in range(len(path), -1, -1):
        line = lines.get(path[:cut])
        if line is not None:
            return line
    return None


def closest(word: str, candidates: tuple[str, ...] | list[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_key(path: KeyPath) -> str:
    key = str(path[-1])
    parent = path[:-1]
    model = model_at(parent)
    known = sorted(model.model_fields) if model is not None else []
    base = f"{quoted(key)} is not a known key {where(parent)}"
    guess = closest(key, known)
    if guess is not None:
        return f"{base}; did you mean {quoted(guess)}?"
    home = home_of_key(key)
    if home is not None:
        return f"{base}; it belongs {home}."
    if known:
        return f"{base}; the keys allowed here are {', '.join(known)}."
    return f"{base}; remove it."


def _missing_key(path: KeyPath) -> str:
    key = str(path[-1])
    parent = path[:-1]
    if path == ("version",):
        return 'the file does not say which policy format it uses; add the line "version: 1" at the top.'
    owner = "the file" if not parent else subject(parent)
    return (
        f"{owner} is missing the required key {quoted(key)}; add it (policies/default.yaml shows an example)."
    )


def _wrong_type(kind: str, path: KeyPath, value: object) -> str:
    sentence = f"{subject(path)} must be {_EXPECTED[kind]} (got {describe_value(value)})"
    if kind == "string_type" and value is not None and not isinstance(value, list | dict):
        return f"{sentence}; put it in quotes."
    if kind == "float_type" and isinstance(value, str):
        return f"{sentence}; write it in digits, e.g. 0.5."
    if kind == "int_type" and isinstance(value, str | float):
        return f"{sentence}; write it in digits without a decimal point, e.g. 20."
    return f"{sentence}."


def _not_a_choice(path: KeyPath, value: object) -> str:
    choices = _CHOICES.get(str(path[-1]), ())
    listed = ", ".join(choices)
    sentence = f"{subject(path)} must be one of {listed} (got {describe_value(value)})"
    guess = closest(value, choices) if isinstance(value, str) else None
    if guess is not None:
        return f"{sentence}; did you mean {quoted(guess)}?"
    return f"{sentence}."


def _sentence(error: Mapping[str, Any], path: KeyPath) -> tuple[KeyPath, str]:
    kind = str(error["type"])
    value = error.get("input")
    if path and path[-1] == "[key]":
        name_path = path[:-1]
        return name_path, f"the name {quoted(name_path[-1])} must be text; put it in quotes."
    if kind == "extra_forbidden":
        return path, _unknown_key(path)
    if kind == "missing":
        return path, _missing_key(path)
    if kind in _EXPECTED:
        return path, _wrong_type(kind, path, value)
    if kind == "literal_error":
        return path, _not_a_choice(path, value)
    # Unforeseen kinds still get a located sentence; pydantic's text carries no input value.
    return path, f"{subject(path)} is not valid: {str(error.get('msg', 'invalid value')).lower()}."


def problems_from(exc: ValidationError, lines: Mapping[KeyPath, int]) -> list[Problem]:
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the real key "missing"; the typo's sentence already says it all.
    explained: set[KeyPath] = set()
    for error in errors:
        loc: KeyPath = tuple(error["loc"])
        if error["type"] == "extra_forbidden" and loc:
            model = model_at(loc[:-1])
            guess = closest(str(loc[-1]), sorted(model.model_fields)) if model is not None else None
            if guess is not None:
                explained.add((*loc[:-1], guess))
    out: list[Problem] = []
    for error in errors:
        raw: KeyPath = tuple(error["loc"])
        if error["type"] == "missing" and raw in explained:
            continue
        path, message = _sentence(error, raw)
        clean = tuple(step for step in path if step != "[key]")
        out.append(Problem(Severity.ERROR, message, line_for(clean, lines), clean))
    return out

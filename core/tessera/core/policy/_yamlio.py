"""Read a policy file's YAML into plain data plus a map from every key path to its line number.

PyYAML silently keeps the last of two equal keys and forgets positions once it builds Python
objects, so the text is first *composed* into a node tree (``yaml.compose``): duplicate keys are
found there, and every key's line is recorded, before the tree is turned into dicts and lists.
"""

from __future__ import annotations

import re

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tessera.core.policy._problems import KeyPath, Problem, Severity

# Policy files are shallow (five levels); this bounds the walk even if an alias points at itself.
_MAX_DEPTH = 32


class _PolicyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader that also reads ``1e-6`` as a number: YAML 1.1 insists on ``1.0e-6``, and a
    compliance officer writing delta as ``1e-6`` should not get the text "1e-6"."""


_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class YamlProblems(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("policy YAML problems")
        self.problems = problems


def _error(message: str, line: int | None, path: KeyPath = ()) -> Problem:
    return Problem(Severity.ERROR, message, line, path)


def _syntax_problem(exc: yaml.MarkedYAMLError) -> Problem:
    problem = exc.problem or ""
    context = exc.context or ""
    line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
    context_line = exc.context_mark.line + 1 if exc.context_mark is not None else line
    if "could not find expected ':'" in problem:
        return _error('this line has a key without a colon after it; write it as "key: value".', context_line)
    if "'\\t'" in problem:
        return _error("this line is indented with a tab; YAML needs spaces for indentation.", line)
    if "mapping values are not allowed" in problem:
        return _error(
            "there is a colon where YAML does not expect one; check this line's indentation, "
            'or put a value that contains ": " in quotes.',
            line,
        )
    if "quoted scalar" in context:
        return _error(
            "a quotation mark opened on this line is never closed; add the closing quote.", context_line
        )
    if "expected <block end>" in problem:
        return _error(
            "the indentation of this line does not match the lines around it; "
            "line it up with its neighbours.",
            line,
        )
    if "expected ',' or ']'" in problem or "expected ',' or '}'" in problem:
        return _error(
            "a list or group written with brackets is not closed properly; "
            "check its commas and closing bracket.",
            context_line,
        )
    if "another document" in problem:
        return _error('the file holds a second YAML document (a second "---" line); keep only one.', line)
    if "undefined alias" in problem:
        return _error("an alias (*name) refers to an anchor that is not defined; remove the alias.", line)
    return _error(
        f"the file is not valid YAML here ({problem or context}); check indentation, colons and quotes.", line
    )


def _duplicates(node: Node, depth: int = 0) -> list[Problem]:
    if depth > _MAX_DEPTH:
        return []
    found: list[Problem] = []
    if isinstance(node, MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if ident in seen:
                    found.append(
                        _error(
                            f'the key "{key_node.value}" appears twice here (first on line {seen[ident]}); '
                            "keep only one of them.",
                            line,
                        )
                    )
                else:
                    seen[ident] = line
            found.extend(_duplicates(value_node, depth + 1))
    elif isinstance(node, SequenceNode):
        for item in node.value:
            found.extend(_duplicates(item, depth + 1))
    return found


def _record_lines(node: Node, path: KeyPath, lines: dict[KeyPath, int], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, MappingNode):
        constructor = _PolicyLoader("")
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            key = constructor.construct_object(key_node)
            if not isinstance(key, str | int):
                key = str(key)
            child = (*path, key)
            # The first occurrence wins for lines too; duplicates were refused before this.
            lines.setdefault(child, key_node.start_mark.line + 1)
            _record_lines(value_node, child, lines, depth + 1)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines.setdefault(child, item.start_mark.line + 1)
            _record_lines(item, child, lines, depth + 1)


def read_document(text: str) -> tuple[object, dict[KeyPath, int]]:
    """Parse ``text`` into (data, lines); raise ``YamlProblems`` for syntax errors, duplicate keys
    or an empty document. ``lines`` maps key paths (keys and list indices) to 1-based lines."""
    try:
        node = yaml.compose(text, Loader=_PolicyLoader)
    except yaml.MarkedYAMLError as exc:
        raise YamlProblems([_syntax_problem(exc)]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise YamlProblems(
            [_error("the file contains a control character that YAML does not allow; remove it.", line)]
        ) from None
    except yaml.YAMLError:
        raise YamlProblems(
            [_error("the file is not valid YAML; check its indentation and quotes.", None)]
        ) from None
    if node is None:
        raise YamlProblems(
            [_error("the file is empty; start from policies/default.yaml and adapt it.", None)]
        )
    duplicates = _duplicates(node)
    if duplicates:
        raise YamlProblems(duplicates)
    try:
        data = _PolicyLoader("").construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise YamlProblems([_syntax_problem(exc)]) from None
    except (yaml.YAMLError, TypeError, RecursionError):
        raise YamlProblems(
            [_error("the file uses YAML features a policy cannot hold; write plain keys and values.", None)]
        ) from None
    lines: dict[KeyPath, int] = {(): node.start_mark.line + 1}
    _record_lines(node, (), lines)
    return data, lines

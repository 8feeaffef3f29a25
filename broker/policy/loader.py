"""Reading ``policies/*.yaml`` into domain policies, reporting every problem with its line."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)
from pydantic_core import ErrorDetails

from broker.domain.policy import Policy
from broker.domain.protocols import Protocol
from broker.policy.spec import KNOWN_FIELDS, PolicySpec

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyProblem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class PolicyError(Exception):
    """Policy files that cannot be used; ``problems`` lists every one of their errors."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


# --- field types ---------------------------------------------------------------------------

# --- locating problems ---------------------------------------------------------------------


def _path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line(node: yaml.Node, loc: Loc) -> int:
    """The line of the deepest YAML node that ``loc`` reaches (the key's line for a mapping)."""
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == part]
            if not found:
                break
            key, node = found[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _shown(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_EXPECTED = {
    "string_type": "expected text",
    "int_type": "expected a whole number",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "model_type": "expected a mapping",
    "dict_type": "expected a mapping",
}


def _unknown_field(name: str) -> str:
    close = difflib.get_close_matches(name, KNOWN_FIELDS, n=1)
    return f"unknown field {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_field(str(error["loc"][-1]))
    if kind == "missing":
        return "required field is missing"
    if kind == "value_error" and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    if kind == "literal_error":
        return f"expected {error.get('ctx', {}).get('expected', 'one of the choices')}, got" \
            f" {_shown(error['input'])}"
    if kind in _EXPECTED:
        return f"{_EXPECTED[kind]}, got {_shown(error['input'])}"
    return str(error["msg"])


# --- files ---------------------------------------------------------------------------------


class _File:
    """Problems and policies of one file; ``root`` is its composed YAML tree."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.root: yaml.Node | None = None
        self.problems: list[PolicyProblem] = []
        self.policies: list[Policy] = []

    def report(self, loc: Loc, message: str, line: int | None = None) -> None:
        if line is None:
            line = _line(self.root, loc) if self.root is not None else 0
        self.problems.append(PolicyProblem(self.path, line, _path(loc), message))


def _duplicate_keys(node: yaml.Node, loc: Loc, out: _File, seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[object, int] = {}
        for key, value in node.value:
            name = getattr(key, "value", None)
            here = key.start_mark.line + 1
            if isinstance(name, str) and name in first:
                out.report((*loc, name), f"duplicate key (first given on line {first[name]})", here)
            elif isinstance(name, str):
                first[name] = here
                _duplicate_keys(value, (*loc, name), out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicate_keys(item, (*loc, index), out, seen)


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _read(path: Path, out: _File) -> Any:
    """The file's data, with ``out.root`` set; on failure a problem is reported, root stays None."""
    try:
        text = path.read_text(encoding="utf-8")
        out.root, data = _parse(text)
    except UnicodeDecodeError:
        out.report((), "not UTF-8 text", 0)
    except OSError as exc:
        out.report((), f"cannot read the file: {exc.strerror or exc}", 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = f"{exc.context}: {exc.problem}" if exc.context else str(exc.problem)
        out.report((), f"YAML syntax error: {detail}", mark.line + 1 if mark else 0)
    except yaml.YAMLError as exc:
        out.report((), f"YAML syntax error: {exc}", 0)
    else:
        if out.root is None:
            out.report((), "the file is empty: it needs a 'policies:' list", 1)
        else:
            _duplicate_keys(out.root, (), out, set())
        return data
    return None


def _check_file(path: Path, seen: dict[str, Policy]) -> _File:
    out = _File(str(path))
    data = _read(path, out)
    if out.root is None:
        return out
    if not isinstance(data, dict):
        out.report((), f"expected a mapping with a 'policies:' list, got {_shown(data)}")
        return out
    for key in data:
        if key != "policies":
            out.report((str(key),), _unknown_field(str(key)))
    items = data.get("policies")
    if "policies" not in data:
        out.report(("policies",), "required field is missing: the file needs a 'policies:' list")
    elif not isinstance(items, list):
        out.report(("policies",), f"expected a list of policies, got {_shown(items)}")
    elif not items:
        out.report(("policies",), "empty list: delete the file to use the built-in default")
    else:
        for index, item in enumerate(items):
            _check_policy(item, ("policies", index), out, seen)
    out.problems.sort(key=lambda problem: problem.line)
    return out


def _check_policy(item: object, loc: Loc, out: _File, seen: dict[str, Policy]) -> None:
    try:
        spec = PolicySpec.model_validate(item)
    except ValidationError as exc:
        for error in exc.errors():
            out.report((*loc, *error["loc"]), _message(error))
        return
    if spec.forward_ports and spec.protocols is not None and Protocol.FORWARD not in spec.protocols:
        out.report((*loc, "forward_ports"), "ports given but 'forward' is not in protocols")
    assert out.root is not None
    policy = spec.to_policy(out.path, _line(out.root, loc), [
        _line(out.root, (*loc, "commands", index)) for index in range(len(spec.commands))])
    if spec.name in seen:
        out.report(
            (*loc, "name"),
            f"duplicate policy name {spec.name!r}: already defined at {seen[spec.name].location}",
        )
        return
    seen[spec.name] = policy
    out.policies.append(policy)


def _load(directory: Path) -> tuple[list[Policy], list[PolicyProblem]]:
    if not directory.exists():
        return [], [PolicyProblem(str(directory), 0, "", "policy directory does not exist")]
    if not directory.is_dir():
        return [], [PolicyProblem(str(directory), 0, "", "not a directory")]
    try:
        paths = sorted(
            (
                p
                for p in directory.iterdir()
                if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
            ),
            key=lambda p: p.name,
        )
    except OSError as exc:
        return [], [PolicyProblem(str(directory), 0, "", f"cannot list: {exc.strerror or exc}")]
    seen: dict[str, Policy] = {}
    policies: list[Policy] = []
    problems: list[PolicyProblem] = []
    for path in paths:
        checked = _check_file(path, seen)
        policies += checked.policies
        problems += checked.problems
    return policies, problems


def check_policies(directory: Path) -> list[PolicyProblem]:
    """Every problem in the policy files of ``directory``; empty when they are all fine."""
    return _load(directory)[1]


def load_policies(directory: Path) -> list[Policy]:
    """The policies of ``directory`` in order (file name, then position in the file).

    No files means no policies, so the built-in default applies. Raises :class:`PolicyError`
    listing every problem when any file is wrong.

    Every login asks, several times, and parsing costs milliseconds a file: the files are
    read again only when one of them is added, removed or changed (its inode, size, change
    or modification time), so an edit applies to the next login as before.
    """
    signature = _signature(directory)
    cached = _loaded.get(directory)
    if signature is not None and cached is not None and cached[0] == signature:
        policies, problems = cached[1], cached[2]
    else:
        policies, problems = _load(directory)
        if signature is not None:
            _loaded[directory] = (signature, policies, problems)
    if problems:
        raise PolicyError(problems)
    return list(policies)


_Signature = tuple[tuple[str, int, int, int, int], ...]
_loaded: dict[Path, tuple[_Signature, list[Policy], list[PolicyProblem]]] = {}


def _signature(directory: Path) -> _Signature | None:
    """What :func:`load_policies` would read, as stat() sees it; None when it cannot tell
    (the load then says why)."""
    try:
        with os.scandir(directory) as entries:
            return tuple(sorted(
                (entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                for entry in entries
                if entry.name.endswith((".yaml", ".yml")) and not entry.name.startswith(".")
                for st in (entry.stat(),)))
    except OSError:
        return None

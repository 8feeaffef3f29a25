"""The policy file keys for live sessions: ``commands`` and ``supervision``.

```yaml
    commands:
      - match: '^\\s*rm\\s+-rf\\s+/'
        action: deny
        message: "recursive deletes from / are not allowed on clinical devices"
    supervision: required
```
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from broker.domain.session_rules import (
    MAX_MESSAGE,
    CommandAction,
    CommandRule,
    SessionRules,
    compile_pattern,
)

_ACTIONS = ", ".join(a.value for a in CommandAction)
SUPERVISION_CHOICES = ("required", "none")


def _action(value: object) -> CommandAction:
    if isinstance(value, str) and value.strip().lower() in {a.value for a in CommandAction}:
        return CommandAction(value.strip().lower())
    raise ValueError(f"unknown action {value!r} (choose from {_ACTIONS})")


def _pattern(value: str) -> str:
    compile_pattern(value)  # a ValueError names the problem
    return value


def _message(value: str) -> str:
    text = " ".join(value.split())
    if not text:
        raise ValueError("must not be empty: it is what the technician is shown")
    if len(text) > MAX_MESSAGE:
        raise ValueError(f"longer than {MAX_MESSAGE} characters (it is shown on one line)")
    if not text.isprintable():
        raise ValueError("control characters are not allowed in a message")
    return text


def _supervision(value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in SUPERVISION_CHOICES:
        return value.strip().lower()
    raise ValueError(f"unknown supervision {value!r} (write required or none)")


Pattern = Annotated[str, AfterValidator(_pattern)]
Action = Annotated[CommandAction, BeforeValidator(_action)]
Message = Annotated[str, AfterValidator(_message)]
Supervision = Annotated[str, BeforeValidator(_supervision)]


class StrictSpec(BaseModel):
    """A mapping of the policy file: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CommandRuleSpec(StrictSpec):
    match: Pattern
    action: Action
    message: Message


def session_rules(commands: list[CommandRuleSpec], supervision: str,
                  lines: list[int] | None = None) -> SessionRules:
    """The domain rules of one policy; ``lines`` are the rules' lines in the file."""
    where = lines or [0] * len(commands)
    return SessionRules(
        commands=tuple(CommandRule(c.match, c.action, c.message, line)
                       for c, line in zip(commands, where, strict=True)),
        supervision_required=supervision == "required")


def describe_session(rules: SessionRules) -> list[str]:
    """``broker policy explain``'s lines for the session rules."""
    lines = ["Supervision: required (a hospital supervisor must watch the session)"
             if rules.supervision_required else "Supervision: not required"]
    if not rules.commands:
        return [*lines, "Command rules: none"]
    lines.append("Command rules (the first that matches wins):")
    lines += [f"  {rule.describe()}" + (f" (line {rule.line})" if rule.line else "")
              for rule in rules.commands]
    return lines


def session_json(rules: SessionRules) -> dict[str, object]:
    return {"supervision": "required" if rules.supervision_required else "none",
            "commands": [{"match": r.match, "action": r.action.value, "message": r.message,
                          "line": r.line} for r in rules.commands]}

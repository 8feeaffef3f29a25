"""E-mail templates: Jinja2 text files, ``<event kind>.txt``, whose first line is
``Subject: ...``. A file of the same name in ``[notify] templates_dir`` replaces the shipped
one (``broker/approvals/notify/templates``), so an admin changes wording without touching code.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2

from broker.domain.durations import format_duration
from broker.domain.text import visible
from broker.domain.vendors import shown_end

SHIPPED = Path(__file__).with_name("templates")


class TemplateProblem(Exception):
    """A template that is missing, broken, or has no subject line (one line, names the file)."""


def environment(custom_dir: Path | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if custom_dir is not None:
        loaders.append(jinja2.FileSystemLoader(custom_dir))
    loaders.append(jinja2.FileSystemLoader(SHIPPED))
    # finalize: every value a template prints (reasons, comments, names...) shows control,
    # bidi-override and line-separator characters escaped, whatever the template says.
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=False,  # noqa: S701  (plain-text mail)
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             finalize=shown)
    env.filters["duration"] = lambda seconds: format_duration(timedelta(seconds=int(seconds)))
    env.filters["when"] = lambda iso: datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    # a contract end or expiry as the admin wrote it ("2026-12-31": through that day)
    env.filters["through"] = lambda iso: shown_end(datetime.fromisoformat(iso))
    return env


def shown(value: Any) -> Any:
    """What a template prints for ``value``: text made visible (:func:`visible`)."""
    if isinstance(value, str):
        return visible(value)
    return value


def render_email(env: jinja2.Environment, kind: str, values: dict[str, Any]
                 ) -> tuple[str, str]:
    """(subject, body) of the mail for ``kind``."""
    name = f"{kind}.txt"
    try:
        text = env.get_template(name).render(**values)
    except jinja2.TemplateNotFound:
        raise TemplateProblem(f"{name}: no such e-mail template") from None
    except jinja2.TemplateError as exc:
        where = f" line {exc.lineno}" if isinstance(exc, jinja2.TemplateSyntaxError) else ""
        raise TemplateProblem(f"{name}{where}: {exc.message or type(exc).__name__}") from None
    first, _, body = text.lstrip("\n").partition("\n")
    if not first.startswith("Subject:") or not first[8:].strip():
        raise TemplateProblem(f"{name}: the first line must be 'Subject: ...'")
    return first[8:].strip(), body.lstrip("\n")

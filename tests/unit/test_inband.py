"""Everything after --reason is the reason, as ssh delivers it (its quotes dropped)."""

from __future__ import annotations

import shlex

from hypothesis import given
from hypothesis import strategies as st

from broker.domain.inband import split_reason


def test_the_readme_form_works_as_typed() -> None:
    split = split_reason("request pump-7 --for 45m --reason Battery check")
    assert (shlex.split(split.head), split.reason, split.wait) == (
        ["request", "pump-7", "--for", "45m"], "Battery check", False)


def test_apostrophes_equals_and_a_trailing_wait() -> None:
    split = split_reason("request pump-7 --for 1h --reason=it's the pump's battery --wait")
    assert split.reason == "it's the pump's battery" and split.wait
    assert split_reason("request x --for 1h --wait --reason 'quoted twice'").reason == (
        "quoted twice")
    assert split_reason("request x --for 1h").reason is None
    assert split_reason("request x --reasonable").reason is None
    assert split_reason("request x --for 1h --reason").reason == ""


words = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
                min_size=1, max_size=12).filter(lambda w: not w.startswith("--"))


@given(st.lists(words, min_size=1, max_size=8))
def test_any_reason_comes_back_whole(reason_words: list[str]) -> None:
    reason = " ".join(reason_words)
    split = split_reason(f"request pump-7 --for 2h --reason {reason}")
    expected = reason[1:-1] if len(reason) >= 2 and reason[0] == reason[-1] in "'\"" else reason
    assert split.reason == expected and split.wait is False
    assert split.head == "request pump-7 --for 2h"

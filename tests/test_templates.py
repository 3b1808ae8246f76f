"""Chat templates of other families render the same prompt on any day and in one mode: Llama-3-style templates get a
fixed date, Qwen3-style ones thinking off, and the manifest records what each template reads and what was pinned."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from harness.artifact import PromptArtifact
from harness.provenance import tokenizer_facts
from harness.render import TEMPLATE_PINS, Renderer, template_facts

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"
DAYS = (datetime.date(2025, 3, 1), datetime.date(2026, 11, 30))


@pytest.fixture()
def tok():
    """A fresh copy of the embedded tokenizer, whose chat template each test replaces."""
    from transformers import AutoTokenizer

    from harness.models import embedded_folder

    return AutoTokenizer.from_pretrained(str(embedded_folder()))


def on_day(monkeypatch, template: str, day: datetime.date) -> None:
    """The clock chat templates read: transformers' strftime_now, a global of the template's compiled environment."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    env = _compile_jinja_template(template).environment
    monkeypatch.setitem(env.globals, "strftime_now", lambda fmt: day.strftime(fmt))


def test_llama_style_date_is_the_same_on_two_days(tok, monkeypatch) -> None:
    tok.chat_template = (TEMPLATES / "llama32.jinja").read_text()
    art = PromptArtifact(format="chat", instruction="Answer with one word.")
    ours, unpinned = [], []
    for day in DAYS:
        on_day(monkeypatch, tok.chat_template, day)
        ours.append(Renderer(tok).chat(art, "What is the opposite of hot?"))
        unpinned.append(tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False))
    assert ours[0] == ours[1]
    assert f"Today Date: {TEMPLATE_PINS['date_string']}\n" in ours[0]
    # the check can fail: left to itself, the template writes each day's date
    assert unpinned[0] != unpinned[1] and "Today Date: 01 Mar 2025" in unpinned[0]


def test_qwen_style_thinking_is_off(tok) -> None:
    tok.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    text = Renderer(tok).chat(PromptArtifact(format="chat"), "Is the sky blue?")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # the template's default is thinking: no empty think block
    default = tok.apply_chat_template([{"role": "user", "content": "Is the sky blue?"}], tokenize=False,
                                      add_generation_prompt=True)
    assert default.endswith("<|im_start|>assistant\n")


def test_the_manifest_records_what_a_template_reads_and_what_was_pinned(tok, lm) -> None:
    tok.chat_template = (TEMPLATES / "llama32.jinja").read_text()
    facts = tokenizer_facts(tok)["chat_template"]
    assert facts == template_facts(tok)
    assert facts["pinned"] == {"date_string": TEMPLATE_PINS["date_string"]}
    assert {"custom_tools", "date_string", "tools_in_user_message"} <= set(facts["variables"])
    assert facts["today_in_prompt"] is False
    tok.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    facts = template_facts(tok)
    assert "enable_thinking" in facts["variables"]
    assert facts["pinned"] == {"enable_thinking": False} and facts["today_in_prompt"] is False
    assert template_facts(lm.tokenizer) == {"variables": [], "pinned": {}, "today_in_prompt": False}


def test_a_date_no_variable_fixes_is_named(tok, caplog) -> None:
    tok.chat_template = ("{{ 'Today is ' + strftime_now('%Y-%m-%d') }}{% for m in messages %}{{ m['content'] }}"
                         "{% endfor %}")
    assert template_facts(tok)["today_in_prompt"] is True
    with caplog.at_level("WARNING", logger="harness.render"):
        Renderer(tok).chat(PromptArtifact(format="chat"), "x")
    assert "today's date" in caplog.text

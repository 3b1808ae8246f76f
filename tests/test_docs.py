"""Every command shown in README.md and docs/*.md is either run by the test suite or marked illustrative (#23).

A command is a line (with its `\\` continuations) of a fenced ```bash block. It is illustrative when the block's first
line is the comment `# illustrative` (every command of the block) or when the line itself carries a comment that
starts with `# illustrative`. Every other command must be one of TESTED, which names the test that runs it.

The docs build itself (`mkdocs build --strict`: a broken link, a missing anchor or a page left out of the nav fails
it) runs in one place only: the Makefile's `test` target, right after ruff.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "# illustrative"
README_MAX_LINES = 250

# command, as shown (comment stripped, white space folded) -> (the test file that runs it, a string of that file
# that shows it does)
TESTED: dict[str, tuple[str, str]] = {
    "promptgap demo --smoke": ("tests/test_demo.py", '"demo", "--smoke"'),
    "promptgap init my-study.toml": ("tests/test_demo.py", 'main(["init", str(path)])'),
    "promptgap list": ("tests/test_plugins.py", 'promptgap(plugin_env, "list"'),
    "promptgap bench --suite smoke": ("tests/test_bench.py", 'main(["bench", "--suite", "smoke"'),
    "promptgap check results/quickstart": ("tests/test_committed_reports.py", 'main(["check", "results/quickstart"])'),
}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def bash_blocks(text: str) -> list[list[str]]:
    """The bodies of the fenced ```bash (or ```sh) blocks of a markdown text, as lists of lines."""
    blocks: list[list[str]] = []
    body: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if body is None:
            if stripped.startswith("```") and stripped[3:].split(" ")[0] in ("bash", "sh", "shell"):
                body = []
        elif stripped.startswith("```"):
            blocks.append(body)
            body = None
        else:
            body.append(line)
    return blocks


def commands(block: list[str]) -> list[tuple[str, bool]]:
    """(command, marked illustrative) for each command of a block: continuations joined, heredoc bodies skipped."""
    whole = bool(block) and block[0].strip().startswith(MARKER)
    out: list[tuple[str, bool]] = []
    pending = ""
    heredoc: str | None = None
    for line in block:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if not text or text.startswith("#"):
            continue
        match = re.search(r"<<-?\s*'?\"?(\w+)", text)
        if match:
            heredoc = match.group(1)
        marked = whole or MARKER in text
        command = re.sub(r"\s+#.*$", "", text)
        out.append((" ".join(command.split()), marked))
    return out


def unmarked_untested(text: str) -> list[str]:
    return [c for block in bash_blocks(text) for c, marked in commands(block) if not marked and c not in TESTED]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_is_tested_or_marked_illustrative(path: Path) -> None:
    bad = unmarked_untested(path.read_text(encoding="utf-8"))
    assert not bad, (f"{path.relative_to(ROOT)}: commands neither run by a test (TESTED in tests/test_docs.py) nor "
                     f"marked '{MARKER}': {bad}")


def test_the_check_catches_an_unmarked_command() -> None:
    page = ("```bash\npromptgap list\npromptgap eval --task antonyms \\\n    --condition gcg --out x.jsonl\n"
            "promptgap run c.toml   # illustrative: a run\ncat > a.yaml <<YAML\nnot: a command\nYAML\n```\n"
            "```bash\n# illustrative\npromptgap run other.toml\n```\n")
    assert unmarked_untested(page) == ["promptgap eval --task antonyms --condition gcg --out x.jsonl",
                                       "cat > a.yaml <<YAML"]


@pytest.mark.parametrize("command", sorted(TESTED))
def test_tested_commands_are_shown_and_run(command: str) -> None:
    test_file, evidence = TESTED[command]
    assert evidence in (ROOT / test_file).read_text(encoding="utf-8"), f"{test_file} no longer runs {command!r}"
    shown = {c for p in doc_files() for b in bash_blocks(p.read_text(encoding="utf-8")) for c, _ in commands(b)}
    assert command in shown, f"{command!r} is in TESTED but shown nowhere: drop it from TESTED"


def test_readme_is_a_front_door_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, "the reference belongs in docs/, the README is the front door"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith("#"):
            continue
        assert (ROOT / target.split("#")[0]).exists(), f"README.md links to {target}, which does not exist"


def test_every_docs_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f": {page.name}" in nav, f"docs/{page.name} is not in mkdocs.yml's nav"


def test_the_readmes_config_passes_the_checks(tmp_path: Path) -> None:
    """The tour's run config is a real one: every key, name and role passes the checks `promptgap run` makes first."""
    from harness.config import load_config

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    configs = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert configs, "the README's tour shows a run config"
    for i, body in enumerate(configs):
        path = tmp_path / f"readme-{i}.toml"
        path.write_text(body, encoding="utf-8")
        assert load_config(path).ratio["ceiling"]

"""README.md and docs/*.md: every link lands somewhere, and the README stays a five-minute read.

A moved section or a renamed file breaks links silently on GitHub; this
finds them before a reader does. External links are not fetched (no network).
"""

import re
from pathlib import Path

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code blanked (links there are text)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            out.append(CODE_SPAN.sub("code", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lowercased, punctuation but - and _ dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """Each relative link of a page whose file, image or #anchor does not exist."""
    bad = []
    for line in prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page: Path):
    assert broken_links(page) == []


def test_a_broken_file_image_or_anchor_is_found(tmp_path: Path):
    (tmp_path / "other.md").write_text("# The demo (`bench_demo.py`)\n\n## Steps\n\n## Steps\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n"
        "[ok](other.md#the-demo-bench_demopy) [ok](other.md#steps-1) [ok](#top)\n"
        "[gone](missing.md) ![gone](img/none.png) [bad](other.md#nope) [bad](#nowhere)\n"
        "`[in code](missing-too.md)` [web](https://example.org/x.md)\n"
        "```\n[in a block](missing-three.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "img/none.png: no such file",
        "other.md#nope: no heading with anchor #nope in other.md",
        "#nowhere: no heading with anchor #nowhere in page.md",
    ]


def test_readme_is_short_and_gives_the_commands_ci_and_a_newcomer_run():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci  # the test command CI runs is the one the README gives
    for command in (
        "make test",
        "make demo",
        "clab run services/",
        "docker compose run --rm curriculum-trainer-1.5b",
        "docker compose run --rm evaluator",
    ):
        assert command in readme, command

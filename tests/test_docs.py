"""The README stays a front door and every documentation link resolves, because a reader has only the repository.

Checks: README.md size; the two commands a CI hook greps for; every relative link in README.md and docs/**/*.md
names an existing file and, with #anchor, an existing heading (GitHub's slugs); pointers into docs/ from code
comments resolve too; nothing cites the out-of-tree paper notes, which no user of the repository has.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_LIMIT = 12_000   # bytes: the README is a front door; everything longer lives in docs/
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
DOC_POINTER = re.compile(r"docs/([\w/-]+\.md)(?:#([\w-]+))?")
OUT_OF_TREE = "reference-" + "paper.md"   # spelled in two parts so this file does not cite it


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """Lines outside fenced code blocks: links and headings inside code are not links or headings."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link markup reduced to its text, lower case, punctuation dropped (letters,
    digits, '_', '-' and spaces kept), spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def link_problem(source: Path, target: str) -> str | None:
    """Why a link written in `source` does not resolve (None when it does). External links are not fetched."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target):
        return None
    file_part, _, anchor = target.partition("#")
    path = (source.parent / file_part).resolve() if file_part else source
    if not path.exists():
        return f"{source.relative_to(REPO)}: link to {target}: no such file"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"{source.relative_to(REPO)}: link to {target}: no heading #{anchor} in {path.name}"
    return None


def broken_links(source: Path) -> list[str]:
    problems = []
    for line in prose_lines(source.read_text(encoding="utf-8")):
        for target in LINK.findall(CODE_SPAN.sub(lambda m: "", line)):
            problem = link_problem(source, target)
            if problem:
                problems.append(problem)
    return problems


def code_files() -> list[Path]:
    roots = [REPO / d for d in ("gfnbench", "tests", "examples", "benchmarks")]
    files = [p for root in roots for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".txt")]
    return [p for p in files if p.resolve() != Path(__file__).resolve() and "__pycache__" not in p.parts]


def test_readme_is_a_front_door():
    size = (REPO / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes (limit {README_LIMIT}): move detail into docs/"


def test_readme_shows_the_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make bench TASK=arith" in text and "make test" in text


def test_every_relative_link_resolves():
    problems = [p for doc in doc_files() for p in broken_links(doc)]
    assert not problems, "\n".join(problems)


def test_pointers_from_code_into_docs_resolve():
    problems = []
    for path in code_files():
        for name, anchor in DOC_POINTER.findall(path.read_text(encoding="utf-8", errors="replace")):
            target = REPO / "docs" / name
            if not target.exists():
                problems.append(f"{path.relative_to(REPO)}: docs/{name} does not exist")
            elif anchor and anchor not in anchors(target):
                problems.append(f"{path.relative_to(REPO)}: docs/{name} has no heading #{anchor}")
    assert not problems, "\n".join(problems)


def test_nothing_cites_the_out_of_tree_paper_notes():
    citing = [str(p.relative_to(REPO)) for p in [*code_files(), *doc_files()]
              if OUT_OF_TREE in p.read_text(encoding="utf-8", errors="replace")]
    assert not citing, f"cite docs/paper.md or the paper's own sections instead: {citing}"


@pytest.mark.parametrize("heading,expected", [
    ("Metrics as `evaluate` modules", "metrics-as-evaluate-modules"),
    ("rng and rng_peaked", "rng-and-rng_peaked"),
    ("Which rows keep the base model's ratios", "which-rows-keep-the-base-models-ratios"),
    ("Where the step goes, and its floor", "where-the-step-goes-and-its-floor"),
])
def test_slugs_match_github(heading, expected):
    assert slug(heading) == expected


def test_the_checker_reports_broken_links(tmp_path, monkeypatch):
    """The checks can fail: a missing file, a missing heading and a repeated heading's suffix are all caught."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "other.md").write_text("# Title\n\n## Part\n\n## Part\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[a](other.md#part-1) [b](other.md#part-2) [c](missing.md) [d](#nowhere) [e](https://x.org)\n"
                   "```\n[f](also-missing.md)\n```\n`[g](in-code.md)`\n")
    assert broken_links(doc) == ["doc.md: link to other.md#part-2: no heading #part-2 in other.md",
                                 "doc.md: link to missing.md: no such file",
                                 "doc.md: link to #nowhere: no heading #nowhere in doc.md"]


def test_readme_results_tables_are_the_generated_ones():
    """Every wide-table block in README.md equals the headline table `gfnbench leaderboard` wrote for its task."""
    from gfnbench.readme_tables import BLOCK, synced

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert BLOCK.findall(readme), "README.md quotes no generated table"
    assert synced(readme, REPO / "results") == readme, "README.md's tables are stale: run `make readme-tables`"


def test_readme_tables_sync_replaces_a_hand_edited_block(tmp_path):
    from gfnbench.readme_tables import headline_table, synced

    board = ("# Leaderboard: t\n\n## Headline metrics\n\nCells: ...\n\n| method | x ↑ |\n|---|---|\n| a | **1.0** |\n"
             "\n- note\n\n## x\n\n| method | y |\n|---|---|\n")
    (tmp_path / "t.md").write_text(board)
    assert headline_table(board) == "| method | x ↑ |\n|---|---|\n| a | **1.0** |\n"
    readme = "intro\n<!-- wide-table: t -->\n| typed | by hand |\n<!-- /wide-table -->\nend\n"
    assert synced(readme, tmp_path) == ("intro\n<!-- wide-table: t -->\n| method | x ↑ |\n|---|---|\n| a | **1.0** |\n"
                                        "<!-- /wide-table -->\nend\n")
    with pytest.raises(FileNotFoundError, match="gfnbench leaderboard --task u"):
        synced("<!-- wide-table: u -->\n<!-- /wide-table -->", tmp_path)
    (tmp_path / "precision-bf16-true").mkdir()                   # a keyed folder's table, by its relative path
    (tmp_path / "precision-bf16-true" / "t.md").write_text(board.replace("**1.0**", "**2.0**"))
    keyed = "<!-- wide-table: precision-bf16-true/t -->\n<!-- /wide-table -->"
    assert "| a | **2.0** |" in synced(keyed, tmp_path)
    with pytest.raises(FileNotFoundError, match="gfnbench leaderboard --task t"):
        synced("<!-- wide-table: other/t -->\n<!-- /wide-table -->", tmp_path)
    assert synced("<!-- wide-table: ../t -->\n<!-- /wide-table -->", tmp_path).count("| a |") == 0   # no ..

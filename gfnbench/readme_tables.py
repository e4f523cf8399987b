"""The README's results tables are excerpts of the generated leaderboards, never typed by hand.

A block in README.md between `<!-- wide-table: TASK -->` and `<!-- /wide-table -->` is replaced by the headline
(wide) table of `results/TASK.md` as `gfnbench leaderboard` wrote it; `<!-- wide-table: FOLDER/TASK -->` quotes a
keyed results folder's table (`results/precision-bf16-true/arith.md`). `make readme-tables` (this module's main)
rewrites every block; tests/test_docs.py fails when a block differs from its file, so a stale or edited excerpt
cannot be committed.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- wide-table: ((?:[\w-]+/)*[\w-]+) -->\n)(.*?)(<!-- /wide-table -->)", re.S)


def headline_table(leaderboard_md: str) -> str:
    """The first Markdown table under "## Headline metrics" (header, rule, rows), with a trailing newline."""
    section = leaderboard_md.split("## Headline metrics", 1)
    if len(section) != 2:
        raise ValueError("no '## Headline metrics' section: regenerate it with `gfnbench leaderboard --task ...`")
    lines, table = section[1].splitlines(), []
    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    if not table:
        raise ValueError("the '## Headline metrics' section holds no table")
    return "\n".join(table) + "\n"


def synced(readme: str, results_dir: Path) -> str:
    """The README with every wide-table block replaced by its task's current headline table."""
    def replace(match: re.Match) -> str:
        path = results_dir / f"{match.group(2)}.md"
        if not path.is_file():
            task = match.group(2).rsplit("/", 1)[-1]
            raise FileNotFoundError(f"README.md quotes {path}, which does not exist: run `gfnbench leaderboard "
                                    f"--task {task}` (with that folder's options) first")
        return match.group(1) + headline_table(path.read_text(encoding="utf-8")) + match.group(4)

    return BLOCK.sub(replace, readme)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    readme = Path(args[0] if args else "README.md")
    results_dir = Path(args[1] if len(args) > 1 else "results")
    text = readme.read_text(encoding="utf-8")
    new = synced(text, results_dir)
    if new != text:
        readme.write_text(new, encoding="utf-8")
    print(f"[gfnbench] {readme}: {len(BLOCK.findall(new))} tables quoted from {results_dir}/"
          f"{' (updated)' if new != text else ' (already current)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

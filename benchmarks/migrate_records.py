"""Bring committed runs in line with a changed record format without changing a number (issue 26, issue 30).

    python benchmarks/migrate_records.py rng-eos       # results/runs/rng{,_peaked} -> rng{,_peaked}_eos
    python benchmarks/migrate_records.py infill-refs   # infill samples gain `reference` (s4) and `ending` (s5)

- `rng-eos`: the runs made before issue 26 stopped on `<|im_end|>`; `rng` and `rng_peaked` now stop on ".", so
  those runs are what the `rng_eos` / `rng_peaked_eos` tasks compute. Their folders move and their records'
  `task` becomes the new name, with a `relabelled` entry saying from what and why.
- `infill-refs`: samples written before issue 30 carried the ending s5 as `answer` and not the gold middle s4
  that BLEU, GLEU and BERTScore compare with. Each sample gets `reference` (looked up by story id) and
  `ending`; the record gains `scored_against` and a `backfilled` entry. The script then re-computes every
  question's BLEU from the samples' `reference` and refuses to write if one differs from the record.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from gfnbench.metrics import bleu4
from gfnbench.records import (
    RECORD,
    SAMPLES,
    atomic_write_bytes,
    atomic_write_text,
    git_commit,
    read_samples,
    samples_bytes,
    utc_now,
)
from gfnbench.tasks import get_task
from gfnbench.tasks.infill import for_scoring

RELABEL = {"rng": "rng_eos", "rng_peaked": "rng_peaked_eos"}


def write_record(run: Path, record: dict) -> None:
    atomic_write_text(run / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


def relabel_rng(root: Path) -> int:
    moved = 0
    for old, new in RELABEL.items():
        src, dst = root / old, root / new
        if not src.exists():
            continue
        if dst.exists():
            raise SystemExit(f"{dst} exists already: nothing moved")
        subprocess.run(["git", "mv", str(src), str(dst)], check=True)
        for path in sorted(dst.glob("*/seed*/" + RECORD)):
            record = json.loads(path.read_text())
            record["task"] = new
            record["relabelled"] = {"from_task": old, "at": utc_now(), "by_commit": git_commit(),
                                    "why": f"issue 26: {old} now stops on '.', the model's own terminator; this "
                                           f"run stopped on <|im_end|>, the rule task {new} keeps"}
            write_record(path.parent, record)
            moved += 1
    return moved


def infill_references(root: Path) -> int:
    task = get_task("infill")
    examples = {ex.id: ex for split in task.split_names() for ex in task.examples(split)}
    done = 0
    for path in sorted((root / "infill").glob("*/seed*/" + RECORD)):
        run, record = path.parent, json.loads(path.read_text())
        samples = read_samples(run)
        if samples and "reference" in samples[0]:
            continue
        rows = []
        for s in samples:
            ex = examples[s["id"]]
            if s.pop("answer") != ex.answer:
                raise SystemExit(f"{run}: sample of {s['id']} has an ending that is not the story's: nothing written")
            rows.append({**s, "reference": ex.rationale, "ending": ex.answer})
        check_bleu(run, record, rows)
        atomic_write_bytes(run / SAMPLES, samples_bytes(rows))
        record["scored_against"] = dict(task.scored_against)
        record["backfilled"] = {"at": utc_now(), "by_commit": git_commit(),
                                "what": "samples gained reference (gold middle s4) and ending (s5, was `answer`); "
                                        "per-question BLEU re-computed from them equals the record's"}
        write_record(run, record)
        done += 1
    return done


def check_bleu(run: Path, record: dict, rows: list[dict]) -> None:
    for split, entry in record["per_question"].items():
        for qid, expected in zip(entry["ids"], entry["bleu4"]):
            mine = [r for r in rows if r["split"] == split and r["id"] == qid]
            got = sum(bleu4(for_scoring(r["text"]), for_scoring(r["reference"])) for r in mine) / len(mine)
            if abs(got - expected) > 1e-9:
                raise SystemExit(f"{run}: {split}/{qid} BLEU from the samples' reference is {got}, the record says "
                                 f"{expected}: nothing written")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["rng-eos", "infill-refs"])
    ap.add_argument("--results_dir", default="results/runs")
    args = ap.parse_args(argv)
    root = Path(args.results_dir)
    n = relabel_rng(root) if args.what == "rng-eos" else infill_references(root)
    print(f"{args.what}: {n} runs migrated under {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""gfnbench from Python, in cells (`# %%`: run it whole, or cell by cell in an editor that knows them).

    python examples/api.py [RESULTS_DIR]     # default: a new temporary folder

The smoke profile runs a tiny random model, so this takes seconds; drop `profile="smoke"` for the cpu profile
(the embedded SmolLM2, as `make bench`). tests/test_profiles_api.py runs this file.
"""
import sys
import tempfile

import gfnbench

# %% Where the runs go: one results folder (without results_dir, the profile's own: results/smoke here).
results = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="gfnbench-api-")

# %% One run. Its record is a dict: metrics per split, the effective profile, budget, versions, ...
record = gfnbench.run("rng", "temperature", seed=0, profile="smoke", results_dir=results)
print("temperature, seed 0: exact TV", record["metrics"]["test"]["tv_exact"],
      "| profile", record["config"]["profile"]["name"], "| model", record["model"])

# %% A bench: every method x seed (the run above is kept), then results/rng.md and friends. The table holds the
# records, `.summary` (a DataFrame: one row per method, split and metric, with its mean and 95% CI) and `.means`
# (a DataFrame: one row per method, one column per split and metric).
table = gfnbench.bench("rng", profile="smoke", seeds=[0, 1], methods=["temperature", "greedy"], results_dir=results)
print(table.means[("test", "tv_exact")])

# %% Later, the same table from the records on disk (`gfnbench.load_table("rng")` reads the committed runs).
table = gfnbench.load_table("rng", profile="smoke", results_dir=results)
print(table)
print(table.summary[["method", "split", "metric", "mean", "lo", "hi"]].head())

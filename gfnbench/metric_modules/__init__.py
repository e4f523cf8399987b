"""gfnbench's metrics as `evaluate` modules: one folder per metric, each loadable offline by path,

    evaluate.load(str(gfnbench.metrics.metric_path("bleu")))

The scripts hold no math of their own: they call the pure computations in `gfnbench.metrics` (imported
absolutely, since evaluate copies a script into its modules cache before importing it), and the harness
computes its scores through these same modules (`gfnbench.metrics.load_metric`).
"""
from pathlib import Path

FOLDER = Path(__file__).parent

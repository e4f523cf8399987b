"""Baselines: each module registers its rows when imported (gfnbench.catalog imports them all, in table order)."""

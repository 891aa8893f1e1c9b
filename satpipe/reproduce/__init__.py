"""`satpipe reproduce`: the paper's grid end to end, and its report.

`run.py` runs the steps (data, weak saliency, sources, stores, scores, students, report; its
docstring lists them), `presets.py` holds the grids, `specs.py` what each grid holds (its stores
and student runs), `plan.py` prices them before they start, `fastdev.py` makes the smoke run;
`report.py` writes the report from `tables.py`, `claims.py`, `frontier.py` and
`quality_report.py`; `yardstick.py` measures the machine's speed that time.md scales the wall
time by. This is the one layer, with the CLI and the benchmarks, that uses all three
packages.
"""

from satpipe.reproduce.run import ReproduceConfig, reproduce

__all__ = ["ReproduceConfig", "reproduce"]

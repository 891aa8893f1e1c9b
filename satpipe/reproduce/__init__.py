"""`satpipe reproduce`: the paper's grid end to end (the one module that uses all three packages).

Steps, each skipped when its output exists and is complete, so a killed run resumes:

1. data          out/data/NAME.zarr           built-in `shapes`, or imported from --data-root
2. weak saliency out/saliency/mask.zarr        masks or boxes as +-1 maps (no model)
3. sources       out/sources/{std,adv}/       source models: standard and PGD-trained
4. saliency      out/saliency/SRC-METHOD.zarr  maps for the method study (and CONTROL.zarr)
5. quality       every store scored (`satpipe store score`), recorded in its provenance
6. runs          out/runs/ROW/seedK/          students: train, then evaluate (results.json)
7. report        table.md, results.json, robustness.png, saliency.png, time.md, claims.md,
                 saliency-quality.md, quality-vs-robustness.png, and for presets with a
                 `frontier`: frontier.png, frontier.md; with `distortions`: distortions.png

One bar follows the whole grid with an ETA (each step weighted by its estimated work,
satpipe.reproduce.grid); time.md records the wall time of the run.

Independent runs of step 5 go to dask workers with `jobs > 1` or a `scheduler` address. What
is reported is what was measured: no preset is tuned to make a claim hold.
"""

from satpipe.reproduce.run import ReproduceConfig, reproduce

__all__ = ["ReproduceConfig", "reproduce"]

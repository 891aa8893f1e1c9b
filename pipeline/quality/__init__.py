"""Quality scores of saliency stores (`satpipe store score`): one registry, one file per family.

    localisation   against the dataset's masks or boxes, every row, streamed shard by shard
    faithfulness   deletion / insertion curves with the source model, on a seeded subset
    sanity         cascading model randomisation (Adebayo et al. 2018), on the same subset

`score_store(ScoreConfig(...))` computes them and records them in the store's provenance;
importing this package registers every score in `SCORES`.
"""

# Imported to register the scores, in the order `satpipe list scores` shows the families.
# isort: off
from satpipe.pipeline.quality import localisation  # noqa: F401
from satpipe.pipeline.quality import faithfulness  # noqa: F401
from satpipe.pipeline.quality import sanity  # noqa: F401

# isort: on
from satpipe.pipeline.quality.registry import FAMILIES, SCORES, Score, family_scores

__all__ = ["FAMILIES", "SCORES", "Score", "family_scores", "score_store"]


def score_store(config):
    """See `satpipe.pipeline.quality.score.score_store`."""
    from satpipe.pipeline.quality.score import score_store as run

    return run(config)

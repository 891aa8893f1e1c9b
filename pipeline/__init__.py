"""The saliency stage: methods registry, normalisation, saliency stores and the shard runner."""

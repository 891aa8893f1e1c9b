"""The saliency stage: methods registry, normalisation, saliency stores, the shard runner and
the quality scores. Uses `satpipe.train` only through its model-loading API."""

"""satpipe: Saliency-based Adversarial Training made cheap, fast and shareable.

Two stages joined only by files: `satpipe.pipeline` writes saliency maps into zarr stores,
`satpipe.train` streams (image, saliency, label) from them and trains the SAT variants.
"""

__version__ = "0.1.0"

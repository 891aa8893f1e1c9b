"""Dataset sources, importers, the store schema and the loaders.

Imports only `satpipe.core` (errors, registry, progress, ...): every stage above reads and
writes stores through this package, never the other way (the contract in pyproject.toml).
"""

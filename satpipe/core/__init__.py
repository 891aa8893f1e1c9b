"""What every layer may import: errors, the registry type, seeding, devices, progress
bars, statistics, the dask cluster helper and the typed-option helpers. Imports nothing above."""

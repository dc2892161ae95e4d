"""The Prefect flow `sagan-pipeline` (pipeline.py) and what it needs around it (ARCHITECTURE.md).
May import pipelines.stages, results, launch, lock, quoting, tracking and sagan_core; never the CLI.
"""

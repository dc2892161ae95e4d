"""Orchestration and record keeping around sagan_core: the CLI, stages, MLflow, Prefect, DVC glue."""

"""pipelines: orchestration and records around sagan_core (the `sagan` CLI, Prefect, MLflow, DVC).

stages.py is the one implementation of each stage (prepare, train, evaluate, register), called by
the CLI (cli/), by dvc.yaml (through the CLI) and by the Prefect flow (flow/); it returns the typed
records of results.py. tracking/ records into MLflow, registry/ registers and promotes. Arrows point
down only: cli → flow → stages → registry → tracking → sagan_core; nothing in sagan_core imports
from here (tests/test_layout.py).
"""

"""pipelines: orchestration and records around sagan_core (the `sagan` CLI, Prefect, MLflow, DVC).

Arrows point down only (ARCHITECTURE.md): cli → flow → stages → registry → tracking → sagan_core;
nothing in sagan_core imports from here (tests/test_layout.py).
"""

"""The MLflow model registry: registering, the FID promotion gate, model cards, sampling
(ARCHITECTURE.md lists the modules).

May import pipelines.lock, pipelines.tracking, pipelines.results, pipelines.quoting and sagan_core.
"""

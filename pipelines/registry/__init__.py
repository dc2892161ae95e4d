"""The MLflow model registry: registering a run's generator with its FID promotion gate
(register.py), the versions' and model's descriptions (model_card.py), and sampling from
registered models or checkpoints (sampling.py).

May import pipelines.lock, pipelines.tracking, pipelines.results, pipelines.quoting and sagan_core.
"""

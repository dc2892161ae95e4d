"""The Prefect flow `sagan-pipeline` (pipeline.py) and what it needs around it: its typed form
(settings.py), notification hooks (notify.py), progress and run reports (report.py), log routing (console.py)
and DVC status/commit (dvc_sync.py).

May import pipelines.stages, results, launch, lock, quoting, tracking and sagan_core; never the CLI.
"""

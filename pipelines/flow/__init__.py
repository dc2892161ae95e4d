"""The Prefect flow `sagan-pipeline` (pipeline.py) and what it needs around it: notification hooks
(notify.py), progress and run reports (report.py), log routing (console.py), DVC status/commit
(dvc_sync.py) and `--set` in params.yaml (params_writeback.py).

May import pipelines.stages, results, launch, lock, quoting, tracking and sagan_core; never the CLI.
"""

"""MLflow tracking: one MLflow run per training, shared by train, evaluate and register.

`sagan train` creates the run and records it in `<train.out_dir>/mlflow_run.json` (run_record);
`sagan evaluate`, `sagan register` and `sagan train --resume` reopen it. The store is
`tracking.uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///<project>/mlflow.db` with
artifacts in `<project>/mlartifacts`; credentials come from the environment and are never logged.

One module per concern (ARCHITECTURE.md lists them), imported directly. May import sagan_core,
MLflow and the rest of pipelines' leaves (results); never the CLI or the flow.
"""

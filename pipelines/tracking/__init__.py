"""MLflow tracking: one MLflow run per training, shared by train, evaluate and register.

`sagan train` creates the run and records it in `<train.out_dir>/mlflow_run.json` (run_record);
`sagan evaluate`, `sagan register` and `sagan train --resume` reopen it. The store is
`tracking.uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///<project>/mlflow.db` with
artifacts in `<project>/mlartifacts`; credentials come from the environment and are never logged.

One module per concern, imported directly: store (connection, one-line errors), run_record, lineage
(git + data), names (metric names), callback (the trainer's hooks), uploads (background checkpoint
uploads), generator_model (a registered generator as an MLflow model), generator_pyfunc (its
pyfunc, logged as code), evaluation (scores joining the run).

May import sagan_core, MLflow and the rest of pipelines' leaves (results); never the CLI or the flow.
"""

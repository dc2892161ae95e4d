"""MLflow tracking: one MLflow run per experiment run, shared by train, evaluate and register.

`sagan train` creates the run and records its id in `<train.out_dir>/mlflow_run.json` (written
atomically, next to the checkpoint); `sagan evaluate`, `sagan register` and `sagan train --resume`
reopen that run, so params, curves, images, the checkpoint, the generator model and FID all live in
one place.

Where things go:
- embedded default: tracking store `sqlite:///<project>/mlflow.db`, artifacts in `<project>/mlartifacts`
  (MLflow 3.13+ refuses the plain `./mlruns` file store);
- team mode: `registry.tracking_uri` or `$MLFLOW_TRACKING_URI` = an `mlflow server` (which stores
  artifacts on S3 with `--artifacts-destination s3://...`); credentials come from the environment
  (AWS_* / MLFLOW_S3_ENDPOINT_URL / MLFLOW_TRACKING_TOKEN) and are never logged: params are only the
  validated params.yaml, and URIs are shown without their user-info part.

One module per concern, imported directly (this package re-exports nothing):
- store: is tracking on, the store's URI, connecting, experiments, one-line errors;
- run_record: mlflow_run.json, and recovering what an outage made the server miss;
- lineage: git commit, prepared data's content_hash and DVC md5;
- callback: MlflowCallback, the trainer's hooks;
- uploads: background uploads with retries (checkpoints, images, models);
- generator_model: the generator as an MLflow model (pack_inputs builds its network's input);
- generator_pyfunc: that model's pyfunc (table in, PNGs out), logged as code;
- best_model: each best checkpoint as a LoggedModel, and the one `sagan register` registers;
- evaluation: FID/IS/KID joining the run.

May import sagan_core, MLflow and the rest of pipelines' leaves (results); never the CLI or the flow.
"""

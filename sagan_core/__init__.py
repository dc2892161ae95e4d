"""sagan_core: the SAGAN library (data, model, training, evaluation), usable without the pipeline.

It may import torch, torchvision, pytorch-fid, numpy, scipy, Pillow, pydantic, PyYAML, tqdm and
matplotlib; never `pipelines`, MLflow, Prefect or DVC (tests/test_layout.py reads every import).
Events travel up through `sagan_core.train.progress.Callback` hooks instead.

Rooms, each importing only those before it: the top-level modules (config, params_file, errors,
atomic, device) → data/ and model/ → evaluate/ → train/. (config.py reads model/arch.py, which is
torch-free, to check attention placement.)
"""

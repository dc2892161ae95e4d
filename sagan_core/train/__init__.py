"""Training: the loop (trainer.py) over a training state (state.py: modules, optimizers, step,
RNG) that checkpoints keep and resume.py continues bit-exactly, with its hinge losses (losses.py),
device plan (precision.py), DDP helpers (distributed.py), the EMA generator's own BatchNorm
statistics (standing_stats.py), in-training KID/FID and best.pt (periodic_eval.py), what shaped a
checkpoint (fingerprint.py) and the Callback hooks and recorders (progress.py).

May import everything else in sagan_core.
"""

"""Training: the loop (trainer.py) over a state (state.py) that checkpoints keep and resume.py
continues bit-exactly, with its losses, device plan, DDP helpers and recorders (ARCHITECTURE.md: each).

May import everything else in sagan_core.
"""

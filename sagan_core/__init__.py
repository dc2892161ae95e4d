"""sagan_core: the SAGAN library (model, losses, trainer, data, metrics). No orchestration imports."""

__version__ = "0.1.0"

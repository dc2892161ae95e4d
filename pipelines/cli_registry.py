"""`sagan register` and `sagan sample`: MLflow registry and sampling from registered models."""

from __future__ import annotations

from .app import ParamsOpt, QuietOpt, SetOpt, app, load  # noqa: F401

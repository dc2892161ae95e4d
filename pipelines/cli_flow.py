"""`sagan pipeline run|serve`: the Prefect flow and its scheduled deployment."""

from __future__ import annotations

from .app import ParamsOpt, QuietOpt, SetOpt, app, load  # noqa: F401

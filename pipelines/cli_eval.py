"""`sagan evaluate` and `sagan fid`: FID / IS / KID evaluation (see sagan_core.fid)."""

from __future__ import annotations

from .app import ParamsOpt, QuietOpt, SetOpt, app, load  # noqa: F401

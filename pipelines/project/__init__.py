"""A sagan project of one's own (`sagan init DIR`) from the packaged presets and templates.
Imports sagan_core and pipelines.quoting only."""

"""A sagan project of one's own: the presets and the dvc.yaml template that ship in the package
(`presets/*.yaml`, `templates/`), the presets by name and which one fits a look at the images
(`catalog.py`), `sagan init DIR` that writes a new project from them (`create.py`) and the sagan
version a project's outputs were made with (`version.py`).
Imports sagan_core and pipelines.quoting only."""

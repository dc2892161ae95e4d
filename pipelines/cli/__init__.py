"""The `sagan` command: main.py (entry point, exit codes), commands.py (stages and tools), pipeline.py
(the flow), models.py (the registry). Commands hold no pipeline logic and import heavy packages inside
themselves: `sagan --help` stays instant."""

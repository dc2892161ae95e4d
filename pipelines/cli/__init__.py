"""The `sagan` command: main.py (entry point, exit codes, every command registered explicitly),
commands.py (one command per stage or tool, and the options they share), pipeline.py (`sagan
pipeline run|serve|deploy`). Commands parse arguments and call pipelines.stages or the flow; they
hold no pipeline logic. Heavy imports happen inside commands so `sagan --help` stays instant.
"""

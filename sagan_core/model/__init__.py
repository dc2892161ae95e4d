"""The networks, their blocks and tables, the checkpoint file, pictures.

May import the top-level modules of sagan_core only.
"""

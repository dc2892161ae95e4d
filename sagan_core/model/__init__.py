"""The model: SAGAN's generator and discriminator (networks.py) from their blocks (layers.py:
spectral norm, conditional BatchNorm, self-attention), the channel and attention tables (arch.py),
the checkpoint file that holds them (checkpoint.py: the one place a checkpoint is read) and
pictures of them (visualize.py: sample grids, attention maps).

May import the top-level modules of sagan_core only.
"""

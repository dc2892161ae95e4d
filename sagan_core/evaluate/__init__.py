"""FID, IS, KID, PRDC with pytorch-fid's Inception; `sagan evaluate` (protocol.py). Always fp32.

May import the top-level modules of sagan_core, data/ and model/.
"""

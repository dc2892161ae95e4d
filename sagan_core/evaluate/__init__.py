"""Evaluation: FID, Inception Score and KID with pytorch-fid's Inception network.

inception.py loads the network and its weights, fid.py runs images through it (folders, arrays,
statistics files), metrics.py computes the scores, protocol.py is `sagan evaluate` (the seeded
samples, the cached reference statistics, the protocol's identity). Always fp32.

May import the top-level modules of sagan_core, data/ and model/.
"""

"""Data: `data.source` → validated, decoded images → the prepared dataset → training batches.
May import the top-level modules of sagan_core only."""

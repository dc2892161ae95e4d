"""Run by torchrun in test_ddp.py: train a tiny model, then dump this rank's final weights."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import project_params  # noqa: E402

from sagan_core.train.trainer import Trainer  # noqa: E402

project = Path(sys.argv[1])
device = os.environ.get("SAGAN_TEST_DEVICE", "auto")
trainer = Trainer(project_params(project, train__steps=3, train__device=device), progress=False)
trainer.fit()
rank = trainer.dist.rank
torch.save(
    {
        "G": trainer.state.G.state_dict(),
        "D": trainer.state.D.state_dict(),
        "world": trainer.dist.world_size,
    },
    project / f"rank{rank}.pt",
)
torch.distributed.destroy_process_group()

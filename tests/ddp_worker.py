"""Run by tests/test_ddp.py under ``torchrun --nproc_per_node 2``: train the toy problem on CPU.

Each rank starts from a different initialisation (rank 0's must be broadcast) and writes its
final parameters to ``OUT_DIR/rank{r}.pt``; rank 0 also writes the run directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from comostream.training.distributed import setup_distributed
from comostream.training.loop import Trainer

from helpers import (
    flat_params,
    plain_step,
    toy_config,
    toy_dataset,
    toy_state,
    toy_valid,
)

GLOBAL_BATCH, STEPS, LR = 8, 4, 0.2


def main(out_dir: Path) -> None:
    info, device = setup_distributed("cpu")
    assert info.world_size == 2 and dist.get_backend() == "gloo"
    cfg = toy_config(
        batch_size=GLOBAL_BATCH // info.world_size,
        max_steps=STEPS,
        ckpt_every=2,
        log_every=1,
        valid_every=2,
        lr=LR,
        grad_clip=0.0,
    )
    state = toy_state(cfg, seed=info.rank, dropout=0.0, sgd=True)
    trainer = Trainer(
        cfg,
        state,
        plain_step,
        toy_dataset(),
        out_dir / "run",
        kind="toy",
        valid_fn=toy_valid,
        progress=False,
        tensorboard=False,
    )
    trainer.fit()
    torch.save(flat_params(state), out_dir / f"rank{info.rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

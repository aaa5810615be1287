"""Data-parallel training with 2 CPU processes (gloo) launched by torchrun.

Checks: (1) both ranks end with bit-identical parameters although they start from different
initialisations and see different samples (rank 0's weights are broadcast and gradients are
synchronised); (2) the result equals, to float rounding, one process training on the same global
batch of 8 with plain SGD and no clipping, whose update is proportional to the gradient: so
gradients are *averaged* over ranks (not summed) and rank r takes the r-th block of each global
batch; (3) rank 0 alone writes the run directory, and the checkpoint holds both ranks' RNG states.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from comostream.models.checkpoint_io import load_checkpoint
from comostream.training.loop import Trainer
from comostream.training.runlog import read_stats

from ddp_worker import GLOBAL_BATCH, LR, STEPS
from helpers import flat_params, plain_step, toy_config, toy_dataset, toy_state

ROOT = Path(__file__).resolve().parent.parent


def test_two_gloo_ranks_match_one_process_with_the_global_batch(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the worker imports helpers from its folder
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "ddp_worker.py"),
        str(tmp_path),
    ]
    for _ in range(2):  # one retry, only when gloo's two processes failed to connect
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0 or "peer ranks" not in proc.stdout + proc.stderr:
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)

    cfg = toy_config(batch_size=GLOBAL_BATCH, max_steps=STEPS, ckpt_every=100, lr=LR, grad_clip=0.0)
    single = toy_state(cfg, seed=0, dropout=0.0, sgd=True)
    start = flat_params(single).clone()
    Trainer(
        cfg,
        single,
        plain_step,
        toy_dataset(),
        tmp_path / "single",
        kind="toy",
        progress=False,
        tensorboard=False,
    ).fit()
    assert not torch.allclose(flat_params(single), start, atol=1e-3)  # it did train
    torch.testing.assert_close(rank0, flat_params(single), rtol=1e-5, atol=1e-6)

    run = tmp_path / "run"
    ck = load_checkpoint(run / "last.pt", kind="toy")
    assert ck["step"] == STEPS and ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # seeded per rank
    assert [r["step"] for r in read_stats(run, "train")] == [1, 2, 3, 4]  # one writer
    assert [r["step"] for r in read_stats(run, "valid")] == [2, 4]

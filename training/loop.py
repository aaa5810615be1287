"""The one training loop for every stage (teacher, distillation, vocoder, fine-tuning).

A stage supplies a :class:`TrainState` (its models and optimisers), a data source indexed by
global sample id (see :mod:`comostream.training.sampler`) and a ``step_fn(state, batch) -> {name:
loss}``. If the dict has a ``"loss"`` key, that tensor is backpropagated and the others are only
logged; otherwise the sum of all values is. After the backward pass gradients are averaged over DDP
ranks, clipped to ``train.grad_clip`` (per optimiser), every optimiser and LR scheduler steps,
then ``after_step(state)`` runs (the EMA update of distillation plugs in here).

LR schedule (per optimiser, :func:`lr_factor`): linear warm-up from ``lr / warmup_steps`` to
``lr`` over ``warmup_steps`` steps, then ``"constant"`` or ``"cosine"`` (to 0 at ``max_steps``).

Run directory: ``config.json``, ``stats.jsonl``, ``tb/``, ``ckpt_{step:08d}.pt`` every
``ckpt_every`` steps and at the end, ``last.pt`` (the newest) and ``best.pt`` (the checkpoint with
the lowest validation metric among those written at a validation step: ``valid_fn``'s ``"loss"``,
else its first value, unless ``best_metric`` names one). Only the newest ``keep_checkpoints``
``ckpt_*.pt`` (up to the current step) are kept; ``last.pt`` and ``best.pt`` are hard links, so
pruning never loses them. Temp files that an interrupted write left are removed when a run
starts, with one line on stderr. A full disk stops training with one error naming the file
(:class:`CheckpointWriteError` or :class:`RunWriteError`); the previous checkpoint stays valid.

A checkpoint holds the models' state dicts (not ``frozen`` ones), optimisers, schedulers, step,
the ``best.pt`` record and every rank's RNG states; with the sample-id data scheme this makes
"N steps, stop, resume, M steps" bit-identical to "N + M steps" on CPU. Validation runs on rank 0
with its RNGs reseeded (so validation losses are comparable across steps) and the training RNG
state restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from comostream.models.config import Config, config_to_dict
from comostream.training.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    get_rng_state,
    link_checkpoint,
    load_checkpoint,
    load_state_strict,
    remove_stale_temps,
    save_checkpoint,
    set_rng_state,
)
from comostream.training.distributed import (
    DistInfo,
    all_gather_objects,
    average_gradients,
    broadcast_modules,
    dist_info,
    mean_over_ranks,
    move_to,
)
from comostream.training.runlog import RunLogger, RunWriteError, write_text_atomic
from comostream.training.sampler import GlobalBatchSampler
from comostream.training.state import TrainState, lr_factor, make_state, seed_everything

__all__ = ["StepFn", "TrainState", "Trainer", "lr_factor", "make_state", "seed_everything"]

StepFn = Callable[["TrainState", Any], Mapping[str, Tensor]]
VALID_SEED_OFFSET = 1_000_003  # validation RNG seed = train.seed + this
CKPT_RE = re.compile(r"ckpt_(\d{8,})\.pt")  # the step checkpoints of a run folder
# the files of a run folder whose writes go through a temp file (see remove_stale_temps)
RUN_FILES = r"ckpt_\d{8,}\.pt|last\.pt|best\.pt|config\.json|stats\.jsonl"


class Trainer:
    """Runs ``step_fn`` until ``cfg.train.max_steps`` (or one step with ``dry_run``).

    data: a dataset indexed by global sample id (any int >= 0); ``collate_fn`` makes a batch.
    valid_fn(state) -> {name: float}: run on rank 0 under ``torch.no_grad``, in eval mode; it
    must not use collective operations. kind: the checkpoint kind ("teacher", "distill", ...).
    best_metric: the ``valid_fn`` value that ``best.pt`` minimises (default ``"loss"`` if
    present, else the first value).
    """

    def __init__(
        self,
        cfg: Config,
        state: TrainState,
        step_fn: StepFn,
        data: Dataset[Any],
        run_dir: str | Path,
        *,
        kind: str,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        valid_fn: Callable[[TrainState], Mapping[str, float]] | None = None,
        after_step: Callable[[TrainState], None] | None = None,
        dry_run: bool = False,
        progress: bool = True,
        tensorboard: bool = True,
        best_metric: str | None = None,
    ) -> None:
        self.cfg, self.tcfg, self.state = cfg, cfg.train, state
        self.step_fn, self.valid_fn, self.after_step = step_fn, valid_fn, after_step
        self.data, self.collate_fn = data, collate_fn
        self.run_dir, self.kind = Path(run_dir), kind
        self.dry_run, self.progress, self.tensorboard = dry_run, progress, tensorboard
        self.dist: DistInfo = dist_info()
        self.best_metric = best_metric
        self.best: dict[str, Any] | None = None  # {"step", "metric", "value"} of best.pt
        self._valid: tuple[int, dict[str, float]] | None = None  # the last validation (rank 0)
        seed_everything(self.tcfg.seed + self.dist.rank)
        broadcast_modules([*state.models.values(), *state.frozen.values()], self.dist)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_payload(self) -> dict[str, Any]:
        """The training checkpoint (every rank must call it: RNG states are gathered)."""
        st = self.state
        return {
            "kind": self.kind,
            "step": st.step,
            "config": config_to_dict(self.cfg),
            "world_size": self.dist.world_size,
            "models": {k: m.state_dict() for k, m in st.models.items()},
            "optimizers": {k: o.state_dict() for k, o in st.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in st.schedulers.items()},
            "rng": all_gather_objects(get_rng_state(), self.dist),
            "meta": st.meta,
            "best": self.best,
        }

    def _score(self) -> tuple[str, float] | None:
        """The validation metric of the current step, if validation ran at this step."""
        if self._valid is None or self._valid[0] != self.state.step or not self._valid[1]:
            return None
        result = self._valid[1]
        key = self.best_metric or ("loss" if "loss" in result else next(iter(result)))
        value = result.get(key)
        return (key, value) if value is not None and math.isfinite(value) else None

    def save(self) -> Path | None:
        """Write ``ckpt_{step:08d}.pt``, point ``last.pt`` (and ``best.pt`` if this step's
        validation is the best so far) at it and prune old ones (rank 0); returns the path."""
        payload = self.checkpoint_payload()
        if not self.dist.is_main:
            return None
        score, best = self._score(), self.best
        if score is not None and (
            best is None or best["metric"] != score[0] or score[1] < best["value"]
        ):
            best = {"step": self.state.step, "metric": score[0], "value": score[1]}
        payload["best"] = best
        path = save_checkpoint(self.run_dir / f"ckpt_{self.state.step:08d}.pt", payload)
        link_checkpoint(path, self.run_dir / "last.pt")
        if best is not self.best:
            link_checkpoint(path, self.run_dir / "best.pt")
            self.best = best
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Delete all but the newest ``keep_checkpoints`` ``ckpt_*.pt`` up to the current step.

        Files of later steps (an earlier run being redone after a resume) are left alone;
        ``last.pt`` and ``best.pt`` are never touched. Returns the deleted paths.
        """
        keep = self.tcfg.keep_checkpoints
        if keep <= 0 or not self.dist.is_main:
            return []
        steps = []
        for path in self.run_dir.iterdir():
            m = CKPT_RE.fullmatch(path.name)
            if m and int(m[1]) <= self.state.step and path.is_file():
                steps.append((int(m[1]), path))
        old = [path for _, path in sorted(steps)[:-keep]]
        for path in old:
            path.unlink(missing_ok=True)
        return old

    def resume(self, path: str | Path) -> None:
        """Restore models, optimisers, schedulers, step and this rank's RNG states from ``path``."""
        ck = load_checkpoint(path, kind=self.kind)
        st = self.state
        for section, own in (
            ("models", st.models),
            ("optimizers", st.optimizers),
            ("schedulers", st.schedulers),
        ):
            saved = ck.get(section)
            if not isinstance(saved, dict) or set(saved) != set(own):
                names = sorted(saved) if isinstance(saved, dict) else None
                raise CheckpointError(f"{path}: {section} {names} do not match {sorted(own)}")
        for name, module in st.models.items():
            load_state_strict(module, ck["models"][name], f"{path}: model {name!r}")
        try:
            for name, opt in st.optimizers.items():
                opt.load_state_dict(ck["optimizers"][name])
            for name, sched in st.schedulers.items():
                sched.load_state_dict(ck["schedulers"][name])
        except (ValueError, KeyError, RuntimeError) as exc:
            msg = f"{path}: optimiser/scheduler state does not fit: {exc}"
            raise CheckpointError(msg) from None
        st.step, st.meta = int(ck["step"]), dict(ck.get("meta", {}))
        best = ck.get("best")
        valid_best = isinstance(best, dict) and {"step", "metric", "value"} <= set(best)
        self.best = dict(best) if valid_best else None
        rngs = ck["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # another world size: the data order is still exact, the noise is reseeded
            seed_everything(self.tcfg.seed + self.dist.rank + 7919 * st.step)
            if self.dist.is_main:
                print(
                    f"note: {path} was written by {len(rngs)} ranks, resuming with "
                    f"{self.dist.world_size}: RNG streams reseeded",
                    file=sys.stderr,
                )
        old = ck.get("config", {}).get("train", {})
        changed = sorted(k for k, v in config_to_dict(self.tcfg).items() if old.get(k, v) != v)
        if changed and self.dist.is_main:
            print(
                f"note: resuming {path} with changed [train] {', '.join(changed)}", file=sys.stderr
            )

    # ------------------------------------------------------------------ one step

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.tcfg.amp and self.state.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimiser step on ``batch``; returns the named losses, lr and gradient norms."""
        st = self.state
        for opt in st.optimizers.values():
            opt.zero_grad(set_to_none=True)
        with self._autocast():
            losses = dict(self.step_fn(st, batch))
        if not losses:
            raise ValueError("step_fn returned no losses")
        total = losses["loss"] if "loss" in losses else sum(losses.values())
        if not isinstance(total, Tensor) or total.ndim != 0:
            raise ValueError("step_fn must return scalar tensors")
        bad = (~torch.isfinite(total.detach())).float()
        if self.dist.distributed:  # every rank must stop together, or the others hang
            torch.distributed.all_reduce(bad)
        if bad.item() > 0:
            shown = {k: float(v.detach()) for k, v in losses.items()}
            raise FloatingPointError(f"step {st.step + 1}: non-finite loss {shown}")
        total.backward()
        average_gradients(st.parameters(), self.dist)
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.setdefault("loss", float(total.detach()))
        for name, opt in st.optimizers.items():
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            clip = self.tcfg.grad_clip if self.tcfg.grad_clip > 0 else math.inf
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
            suffix = "" if len(st.optimizers) == 1 else f"_{name}"
            out[f"grad_norm{suffix}"] = norm
            out[f"lr{suffix}"] = float(opt.param_groups[0]["lr"])
            opt.step()
        for sched in st.schedulers.values():
            sched.step()
        st.step += 1
        if self.after_step is not None:
            self.after_step(st)
        return out

    # ------------------------------------------------------------------ validation

    def validate(self, logger: RunLogger | None = None) -> dict[str, float]:
        """Run ``valid_fn`` on rank 0 (eval mode, no grad, reseeded RNG); log and return it."""
        if self.valid_fn is None or not self.dist.is_main:
            return {}
        saved = get_rng_state()
        seed_everything(self.tcfg.seed + VALID_SEED_OFFSET)
        modes = {k: m.training for k, m in self.state.models.items()}
        try:
            for m in self.state.models.values():
                m.eval()
            with torch.no_grad(), self._autocast():
                result = {k: float(v) for k, v in self.valid_fn(self.state).items()}
        finally:
            for k, m in self.state.models.items():
                m.train(modes[k])
            set_rng_state(saved)
        self._valid = (self.state.step, result)
        if logger is not None:
            logger.log("valid", self.state.step, result)
        return result

    # ------------------------------------------------------------------ the loop

    def _batches(self) -> Iterator[Any]:
        sampler = GlobalBatchSampler(
            self.tcfg.batch_size, self.state.step, self.dist.rank, self.dist.world_size
        )
        loader = DataLoader(
            self.data,
            batch_sampler=sampler,
            collate_fn=self.collate_fn,
            num_workers=self.tcfg.num_workers,
            pin_memory=self.state.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.tcfg.seed),  # keeps global RNG untouched
        )
        for batch in loader:
            yield move_to(batch, self.state.device)

    def fit(self, stop_at: int | None = None) -> TrainState:
        """Train to ``max_steps`` (``dry_run``: one step, one validation, one checkpoint).

        ``stop_at``: stop (with a checkpoint) after that many steps instead, as if interrupted;
        the LR schedule still runs to ``max_steps``.
        """
        st, tc, main = self.state, self.tcfg, self.dist.is_main
        end = st.step + 1 if self.dry_run else tc.max_steps
        if stop_at is not None:
            end = min(end, stop_at)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            stale = remove_stale_temps(self.run_dir, RUN_FILES)
            if stale:
                print(
                    f"note: removed {len(stale)} temp file(s) that an interrupted write left in "
                    f"{self.run_dir}: {', '.join(p.name for p in stale)}",
                    file=sys.stderr,
                )
            write_text_atomic(self.run_dir / "config.json", self.cfg.to_json() + "\n")
        logger = RunLogger(self.run_dir, main, self.tensorboard, resume_step=st.step)
        bar = tqdm(
            total=end,
            initial=min(st.step, end),
            desc=self.kind,
            unit="step",
            file=sys.stderr,
            disable=not (self.progress and main),
        )
        for m in st.models.values():
            m.train()
        window: dict[str, list[float]] = {}
        tick, tick_step = time.perf_counter(), st.step
        batches = self._batches()
        try:
            while st.step < end:
                out = self.train_step(next(batches))
                for k, v in out.items():
                    window.setdefault(k, []).append(v)
                bar.update(1)
                final = st.step == end
                if st.step % tc.log_every == 0 or self.dry_run:
                    row = mean_over_ranks(
                        {k: sum(v) / len(v) for k, v in window.items()}, self.dist
                    )
                    now = time.perf_counter()
                    row["steps_per_s"] = (st.step - tick_step) / max(now - tick, 1e-9)
                    tick, tick_step, window = now, st.step, {}
                    logger.log("train", st.step, row)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
                if st.step % tc.valid_every == 0 or self.dry_run:
                    self.validate(logger)
                if st.step % tc.ckpt_every == 0 or final:
                    self.save()
        except (CheckpointWriteError, RunWriteError) as exc:
            raise type(exc)(f"{exc}. {self._stopped_note()}") from exc
        finally:
            batches.close()
            bar.close()
            logger.close()
        return st

    def _stopped_note(self) -> str:
        """What a user needs after a write error: where training stopped and how to go on."""
        last = self.run_dir / "last.pt"
        note = f"Training stopped at step {self.state.step}"
        if not last.is_file():
            return note + "; no checkpoint was written yet"
        try:
            step = int(load_checkpoint(last, kind=self.kind)["step"])
        except CheckpointError:
            return note
        return f"{note}; {last} (step {step}) is intact: free space, then resume from it"

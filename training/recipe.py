"""The reproducible recipe of the shipped default model (``make default-model``).

Runs, as the documented ``comostream`` commands, into one run folder (default
``out/default-model``): the synthetic corpus (10 singers x 2 minutes, ``RUN/corpus``), the real
voices (``prep real``: Allison Smith in US English and Mexican Spanish, June Wallack in
Canadian French, spoken and re-sung, CC-BY-SA 3.0; ``RUN/real``, or an existing folder given
with ``--real``), both seen as one corpus (``prep merge RUN/corpus-all``, the real voices
capped at ``REAL_MINUTES`` minutes of train split per singer), the content encoder, the
training features, the vocoder, the EDM teacher, the consistency distillation; then the
vocoder fine-tuned on the distilled model's own mels (``prep gta``), the inference file with
that vocoder, and its evaluation (``bench quality`` on the synthetic corpus's held-out lines
and on the real voices' held-out prompts). Every stage is
seeded; a finished stage is skipped and an interrupted training stage resumes exactly from its
last checkpoint (:class:`Stage`), so an interrupted run continues where it stopped (even in
another session). ``RUN/recipe.log`` gets each command, its wall time and its output.

Singers: every synthetic singer and every real singer of ``prep real`` keeps its own label:
``allison``, ``allison_es``, ``june`` (the recordings) and ``allison_sung``,
``allison_es_sung``, ``june_sung`` (the same prompts re-sung by WORLD). One label is one
consistent sound: the content is taken from a WORLD-perturbed copy in every case, so a label
mixing natural recordings with WORLD renditions would leave the model no way to tell which
texture to render and it would average them. The ``_sung`` labels carry each person's timbre
over a singing range.

Held out: ``prep real`` splits by prompt (the same prompt is held out spoken and sung, in every
language); the merge keeps each utterance's split, and every training stage reads only the
train split (valid for validation): features select by split, ``train content`` takes train and
valid, the voice prints of ``export --corpus`` train. The real ``test`` prompts are only
converted by ``bench quality``.

Threads: the stages run one after the other, each on every core, up to 4
(:func:`solo_threads`). Time on the 2-core machine: about 1 h 15 min, added up from stage times
measured in separate runs (docs/training.md, the shipped model).

Usage: ``comostream train recipe [RUN_DIR] [--real DIR] [--quick]`` (``--quick``: a few steps
per stage and a few real utterances per singer, to check the plumbing in minutes), which calls
:func:`run_recipe`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from comostream.models.shipped import config_file

__all__ = [
    "GTA_STEPS",
    "REAL_MINUTES",
    "REAL_PROMPTS",
    "Stage",
    "TEACHER_STEPS",
    "run_recipe",
    "solo_threads",
    "stages",
]

REAL_MINUTES = 4.0  # minutes of train split per real singer (the synthetic ones have ~1.6)
REAL_PROMPTS = 120  # prompts per voice `prep real` decodes: covers REAL_MINUTES for each voice
GTA_STEPS = 8000  # the vocoder's fine-tuning on the distilled model's mels (`--gta-steps`)
TEACHER_STEPS = 4000  # the EDM teacher's steps at a constant rate (`--teacher-steps`: on a cosine)


@dataclass(frozen=True)
class Stage:
    """One command of the recipe; done when ``output`` exists. A training stage (``train
    ...``) writes ``output`` (``last.pt``) at every checkpoint, so it is done only when its
    :attr:`marker` exists (written when it exits cleanly); an interrupted one is resumed from
    ``output`` (``--resume``)."""

    name: str
    args: list[str]
    output: Path
    stdout: Path | None = None  # write the command's stdout here (e.g. a JSON report)

    @property
    def trains(self) -> bool:
        """A ``train ...`` command that checkpoints as it goes (resumable); ``train codebook``
        writes its file once, at the end."""
        return self.args[0] == "train" and self.args[1] != "codebook"

    @property
    def marker(self) -> Path:
        """``OUTPUT.done``: written when the stage has finished."""
        return self.output.with_name(self.output.name + ".done")

    def done(self) -> bool:
        """Finished: a training stage's marker exists, another's output does."""
        return self.marker.exists() if self.trains else self.output.exists()

    def command(self) -> list[str]:
        """The arguments to run: a training stage with a checkpoint continues from it."""
        if self.trains and self.output.exists():
            return [*self.args, "--resume", str(self.output)]
        return list(self.args)


def _recipe_config(run: Path, content: Path, content_dim: int = 0) -> Path:
    """``RUN/recipe.toml``: the CPU recipe with this run's content encoder (file ``content``),
    and the acoustic model's ``[model] content_dim`` set to ``content_dim`` when > 0."""
    path = run / "recipe.toml"
    base = config_file("recipe-cpu.toml")
    text = base.read_text().replace('"out/content/last.pt"', f'"{content}"')
    if content_dim:
        text += f"\n[model]\ncontent_dim = {content_dim}  # the run's content encoder's\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _real_stages(run: Path, real: Path | None, quick: bool) -> tuple[list[Stage], Path]:
    """``(stages, real corpus)``: ``prep real`` into ``RUN/real``, or nothing when ``real``
    names a prepared folder (reused as it is)."""
    if real is not None:
        return [], real
    prompts = "6" if quick else str(REAL_PROMPTS)
    out = run / "real"
    stage = Stage(
        "real",
        ["prep", "real", str(out), "--limit", prompts, "--seed", "0"],
        out / "manifest.jsonl",
    )
    return [stage], out


def stages(
    run: Path,
    quick: bool = False,
    real: Path | None = None,
    codebook: int = 0,
    content_dim: int = 0,
    gta_steps: int = 0,
    teacher_steps: int = 0,
) -> list[Stage]:
    """The stages in the order they run: corpora, content encoder, features, vocoder, teacher,
    distillation, the vocoder's fine-tuning on the model's own mels, export, evaluation.
    ``real``: a prepared ``prep real`` folder to reuse (default: ``prep real`` into
    ``RUN/real``). ``codebook`` > 0: a codebook of that many codes is fitted into the content
    encoder (``train codebook``) before the features, so the acoustic model learns on coded
    content and the model file carries it. ``content_dim`` > 0:
    the content encoder's bottleneck (``[content] content_dim``, 48 in the configs) and the
    acoustic model's content input are that many channels. ``gta_steps`` > 0: the vocoder's
    fine-tuning on the model's own mels runs that many steps instead of ``GTA_STEPS``.
    ``teacher_steps`` > 0: the teacher trains that many steps with its learning rate on a cosine
    to 0 (``--lr-schedule cosine``) instead of ``TEACHER_STEPS`` at a constant rate."""
    data = run / "corpus-all"  # the synthetic corpus and the real voices, as one
    encoder = run / "content" / "last.pt"
    coded = run / "content" / f"codebook{codebook}.pt"
    cfg = str(_recipe_config(run, coded if codebook else encoder, content_dim))
    narrow = ["--content-dim", str(content_dim)] if content_dim else []
    real_stages, real_dir = _real_stages(run, real, quick)
    fit = ["train", "codebook", str(encoder), "--data", str(data), "-o", str(coded)]
    codebook_stages = (
        [Stage("codebook", [*fit, "--codes", str(codebook)], coded)] if codebook else []
    )
    configs = config_file("default.toml").parent
    steps = {
        "content": 1200,
        "teacher": teacher_steps or TEACHER_STEPS,
        "distill": 1500,
        "vocoder": 3000,
        "vocoder_gta": gta_steps or GTA_STEPS,
    }
    if quick:
        steps = {k: 4 for k in steps}
    minutes = "0.3" if quick else "2"
    before = [
        Stage(
            "corpus",
            [
                "prep",
                "synth",
                str(run / "corpus"),
                "--singers",
                "10",
                "--minutes",
                minutes,
                "--seed",
                "0",
            ],
            run / "corpus" / "manifest.jsonl",
        ),
        *real_stages,
        Stage(
            "merge",
            [
                "prep",
                "merge",
                str(data),
                str(run / "corpus"),
                str(real_dir),
                "--max-minutes",
                "0.3" if quick else f"{REAL_MINUTES:g}",
            ],
            data / "manifest.jsonl",
        ),
        Stage(
            "content",
            [
                "train",
                "content",
                "--data",
                str(data),
                "--out",
                str(run / "content"),
                "--config",
                str(configs / "content-cpu.toml"),
                "--train-singers",
                "0",
                "--max-steps",
                str(steps["content"]),
                *narrow,
            ],
            encoder,
        ),
        *codebook_stages,
        Stage(
            "features",
            ["prep", "features", str(data), str(run / "feat"), "--config", cfg],
            run / "feat" / "index.jsonl",
        ),
    ]
    acoustic = [
        Stage(
            "teacher",
            [
                "train",
                "teacher",
                "--config",
                cfg,
                "--data",
                str(run / "feat"),
                "--out",
                str(run / "teacher"),
                "--max-steps",
                str(steps["teacher"]),
                *(["--lr-schedule", "cosine"] if teacher_steps else []),
            ],
            run / "teacher" / "last.pt",
        ),
        Stage(
            "distill",
            [
                "train",
                "distill",
                "--config",
                cfg,
                "--teacher",
                str(run / "teacher" / "last.pt"),
                "--data",
                str(run / "feat"),
                "--out",
                str(run / "distill"),
                "--max-steps",
                str(steps["distill"]),
                "--lr",
                "1e-4",
            ],
            run / "distill" / "last.pt",
        ),
    ]
    vocoder = [
        Stage(
            "vocoder",
            [
                "train",
                "vocoder",
                "--config",
                str(configs / "vocoder-cpu.toml"),
                "--data",
                str(run / "feat"),
                "--out",
                str(run / "vocoder"),
                "--max-steps",
                str(steps["vocoder"]),
            ],
            run / "vocoder" / "last.pt",
        ),
    ]
    after = [
        # the vocoder fine-tuned on the model's own mels (comostream.training.vocoder_gta)
        Stage(
            "acoustic-export",
            ["export", str(run / "distill" / "last.pt"), "-o", str(run / "acoustic.ckpt")],
            run / "acoustic.ckpt",
        ),
        Stage(
            "gta",
            [
                "prep",
                "gta",
                str(run / "acoustic.ckpt"),
                "--data",
                str(run / "feat"),
                "--out",
                str(run / "feat-gta"),
            ],
            run / "feat-gta" / "features.json",
        ),
        Stage(
            "vocoder-gta",
            [
                "train",
                "vocoder",
                "--config",
                str(configs / "vocoder-cpu.toml"),
                "--data",
                str(run / "feat-gta"),
                "--out",
                str(run / "vocoder-gta"),
                "--init",
                str(run / "vocoder" / "last.pt"),
                "--max-steps",
                str(steps["vocoder_gta"]),
            ],
            run / "vocoder-gta" / "last.pt",
        ),
        Stage(
            "export",
            [
                "export",
                str(run / "distill" / "last.pt"),
                "-o",
                str(run / "model.ckpt"),
                "--vocoder",
                str(run / "vocoder-gta" / "last.pt"),
                "--corpus",
                str(data),
            ],
            run / "model.ckpt",
        ),
        Stage(
            "quality",
            [
                "bench",
                "quality",
                "--checkpoint",
                str(run / "model.ckpt"),
                "--corpus",
                str(run / "corpus"),
                "--real",
                str(real_dir),
                "--distill",
                str(run / "distill" / "last.pt"),
                "--max-lines",
                "1" if quick else "2",
                "--json",
            ]
            + (["--real-lines", "1"] if quick else [])
            + (["--teacher-steps", "4", "--max-conversions", "4"] if quick else []),
            run / "quality.json",
            stdout=run / "quality.json",
        ),
    ]
    return [*before, *vocoder, *acoustic, *after]


def _run(stage: Stage, log: Path, threads: int = 1) -> subprocess.Popen[bytes] | None:
    """Start ``stage`` (None if it is done) on ``threads`` CPU threads; output appended to
    ``log``."""
    if stage.done():
        _log(log, f"[{stage.name}] done already ({stage.output})")
        return None
    args = stage.command()
    cmd = [sys.executable, "-m", "comostream", *args]
    _log(log, f"[{stage.name}] $ comostream {shlex.join(args)}  ({threads} threads)")
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        NUMBA_NUM_THREADS=str(threads),
        TQDM_MININTERVAL="30",
    )  # progress bars: a line every 30 s in the log
    out = open(stage.stdout, "wb") if stage.stdout else open(log, "ab")  # noqa: SIM115
    err = open(log, "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    proc.stage, proc.started = stage, time.time()  # type: ignore[attr-defined]
    return proc


def _wait(proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    if proc is None:
        return
    rc = proc.wait()
    stage: Stage = proc.stage  # type: ignore[attr-defined]
    minutes = (time.time() - proc.started) / 60  # type: ignore[attr-defined]
    _log(log, f"[{stage.name}] exit {rc} after {minutes:.1f} min")
    if rc != 0:
        if stage.stdout is not None and stage.stdout.exists():
            stage.stdout.unlink()
        raise SystemExit(f"recipe: stage {stage.name} failed (exit {rc}); see {log}")
    if stage.trains:
        stage.marker.touch()


def _log(log: Path, line: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} {line}", flush=True)
    with open(log, "a") as f:
        f.write(f"{stamp} {line}\n")


def _sequence(items: list[Stage], log: Path, threads: int = 1) -> None:
    for stage in items:
        _wait(_run(stage, log, threads), log)


def solo_threads() -> int:
    """CPU threads for a stage: every core, up to 4 (on the 2-core VM a
    vocoder training step takes 0.062 s on 2 threads against 0.118 s on 1)."""
    return max(1, min(os.cpu_count() or 1, 4))


def _check_settings(
    run: Path, codebook: int, content_dim: int = 0, gta_steps: int = 0, teacher_steps: int = 0
) -> None:
    """``RUN/recipe.json`` records the settings a run folder was started with; resuming it with
    others would mix two models' stages, so that is refused (``SystemExit``)."""
    path = run / "recipe.json"
    settings: dict[str, int] = {"codebook": codebook}
    if content_dim:  # recorded only when set: folders from before it resume as they were
        settings["content_dim"] = content_dim
    if gta_steps:  # likewise
        settings["gta_steps"] = gta_steps
    if teacher_steps:  # likewise
        settings["teacher_steps"] = teacher_steps
    before: object = None
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            raise SystemExit(
                f"recipe: {path} is unreadable; remove it or use another folder"
            ) from None
    elif (run / "recipe.log").is_file():  # a run from before the settings were recorded
        before = {"codebook": 0}
    if before is not None and before != settings:
        raise SystemExit(
            f"recipe: {run} was started with {before}, not {settings}: run it again with "
            "those settings, or use another folder"
        )
    run.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings) + "\n")


def run_recipe(
    run: Path = Path("out/default-model"),
    quick: bool = False,
    real: Path | None = None,
    codebook: int = 0,
    content_dim: int = 0,
    gta_steps: int = 0,
    teacher_steps: int = 0,
) -> int:
    """Run every stage into ``run`` (stages already done are skipped); 0 when all succeeded
    (a failed stage raises ``SystemExit`` naming it and the log). ``real``: a prepared
    ``prep real`` folder to reuse instead of preparing ``RUN/real``; ``codebook`` and
    ``content_dim``, ``gta_steps``, ``teacher_steps``: see :func:`stages`."""
    if real is not None and not (Path(real) / "manifest.jsonl").is_file():
        raise SystemExit(f"recipe: {real} holds no manifest.jsonl (make it with `prep real`)")
    _check_settings(run, codebook, content_dim, gta_steps, teacher_steps)
    log = run / "recipe.log"
    t0 = time.time()
    todo = stages(run, quick, real, codebook, content_dim, gta_steps, teacher_steps)
    # one stage at a time on every core: on the 2-core VM the teacher makes 4.8 steps/s on 2
    # threads, against 2.2-2.5 on 1 beside the vocoder
    _sequence(todo, log, solo_threads())
    _log(log, f"recipe finished in {(time.time() - t0) / 60:.1f} min: {run / 'model.ckpt'}")
    return 0

"""The default-model recipe's stage list: order, the GTA-fine-tuned vocoder in the export, the
real voices merged with the synthetic corpus, and the settings a run folder keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from comostream.training.recipe import REAL_MINUTES, run_recipe, stages


def test_stages_fine_tune_the_vocoder_on_the_models_own_mels(tmp_path: Path) -> None:
    names = [s.name for s in stages(tmp_path / "run")]
    assert names == [  # the order they run in, one at a time
        "corpus",
        "real",
        "merge",
        "content",
        "features",
        "vocoder",
        "teacher",
        "distill",
        "acoustic-export",
        "gta",
        "vocoder-gta",
        "export",
        "quality",
    ]
    by = {s.name: s for s in stages(tmp_path / "run")}
    run = tmp_path / "run"
    gta = by["gta"].args
    assert gta[:3] == ["prep", "gta", str(run / "acoustic.ckpt")]
    ft = by["vocoder-gta"].args
    assert ft[ft.index("--init") + 1] == str(run / "vocoder" / "last.pt")
    assert ft[ft.index("--data") + 1] == str(run / "feat-gta")
    export = by["export"].args
    assert export[export.index("--vocoder") + 1] == str(run / "vocoder-gta" / "last.pt")
    # every stage's output lies in the run folder (so a rerun skips what is done)
    assert all(str(s.output).startswith(str(run)) for s in by.values())
    assert (run / "recipe.toml").is_file()


def test_stages_train_on_the_synthetic_corpus_and_the_real_voices(tmp_path: Path) -> None:
    run = tmp_path / "run"
    by = {s.name: s for s in stages(run)}
    real = by["real"].args
    assert real[:3] == ["prep", "real", str(run / "real")] and "--limit" in real
    merge = by["merge"].args
    assert merge[:5] == [
        "prep",
        "merge",
        str(run / "corpus-all"),
        str(run / "corpus"),
        str(run / "real"),
    ]
    assert float(merge[merge.index("--max-minutes") + 1]) == REAL_MINUTES
    # every corpus-reading stage reads the merged corpus
    content = by["content"].args
    assert content[content.index("--data") + 1] == str(run / "corpus-all")
    assert by["features"].args[2] == str(run / "corpus-all")
    export = by["export"].args
    assert export[export.index("--corpus") + 1] == str(run / "corpus-all")
    # the evaluation: the synthetic held-out lines, and the real voices' held-out prompts
    quality = by["quality"].args
    assert quality[quality.index("--corpus") + 1] == str(run / "corpus")
    assert quality[quality.index("--real") + 1] == str(run / "real")


def test_stages_reuse_a_prepared_real_corpus(tmp_path: Path) -> None:
    run, real = tmp_path / "run", tmp_path / "real"
    by = {s.name: s for s in stages(run, quick=True, real=real)}
    assert "real" not in by  # nothing is decoded again
    assert by["merge"].args[4] == str(real)
    merge = by["merge"].args
    assert float(merge[merge.index("--max-minutes") + 1]) < 1  # --quick: a few utterances
    quality = by["quality"].args
    assert quality[quality.index("--real") + 1] == str(real)


def test_recipe_refuses_a_real_folder_without_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="holds no manifest.jsonl"):
        run_recipe(tmp_path / "run", quick=True, real=tmp_path / "empty")
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_an_interrupted_training_stage_resumes_and_a_finished_one_is_skipped(
    tmp_path: Path,
) -> None:
    """``last.pt`` exists from the first checkpoint on: a training stage is done only when it
    exited cleanly (its marker), and is otherwise continued with ``--resume``."""
    by = {s.name: s for s in stages(tmp_path, quick=True)}
    teacher = by["teacher"]
    assert teacher.trains and not teacher.done() and "--resume" not in teacher.command()
    teacher.output.parent.mkdir(parents=True)
    teacher.output.write_bytes(b"a checkpoint")
    assert not teacher.done()
    assert teacher.command()[-2:] == ["--resume", str(teacher.output)]
    teacher.marker.touch()
    assert teacher.done()
    corpus = by["corpus"]
    assert not corpus.trains
    corpus.output.parent.mkdir(parents=True)
    corpus.output.write_text("{}")
    assert corpus.done()


def test_a_codebook_is_fitted_before_the_features_when_asked(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert "codebook" not in [s.name for s in stages(run)]
    assert f'"{run / "content" / "last.pt"}"' in (run / "recipe.toml").read_text()
    coding = stages(run, codebook=64)
    names = [s.name for s in coding]
    assert names.index("content") < names.index("codebook") < names.index("features")
    by = {s.name: s for s in coding}
    coded = run / "content" / "codebook64.pt"
    book = by["codebook"]
    assert book.args[:3] == ["train", "codebook", str(run / "content" / "last.pt")]
    assert book.args[book.args.index("--data") + 1] == str(run / "corpus-all")
    assert book.args[book.args.index("--codes") + 1] == "64"
    assert book.output == coded and not book.trains  # written once: done when it exists
    # the features (and so the acoustic model and the export) take the coded encoder
    assert f'content_checkpoint = "{coded}"' in (run / "recipe.toml").read_text()


def test_a_run_folder_keeps_the_settings_it_was_started_with(tmp_path: Path) -> None:
    from comostream.training.recipe import _check_settings

    run = tmp_path / "run"
    _check_settings(run, 0)
    _check_settings(run, 0)  # the same settings: resumed
    with pytest.raises(SystemExit, match="started with"):
        _check_settings(run, 128)
    old = tmp_path / "old"  # a run from before the settings were recorded: no codebook
    old.mkdir()
    (old / "recipe.log").write_text("[corpus] ...\n")
    with pytest.raises(SystemExit, match="started with"):
        _check_settings(old, 128)
    _check_settings(old, 0)
    assert (old / "recipe.json").is_file()


def test_a_narrower_content_is_passed_to_the_encoder_and_the_acoustic_model(
    tmp_path: Path,
) -> None:
    from comostream.models.config import load_config
    from comostream.training.recipe import _check_settings

    run = tmp_path / "run"
    assert "--content-dim" not in {s.name: s for s in stages(run)}["content"].args
    assert load_config(run / "recipe.toml").model.content_dim == 48
    content = {s.name: s for s in stages(run, content_dim=16)}["content"]
    assert content.args[content.args.index("--content-dim") + 1] == "16"
    assert load_config(run / "recipe.toml").model.content_dim == 16
    _check_settings(run, 0, 16)
    _check_settings(run, 0, 16)  # resumed with the same width
    with pytest.raises(SystemExit, match="started with"):
        _check_settings(run, 0)
    old = tmp_path / "old"
    _check_settings(old, 0)  # a folder started without it: {"codebook": 0} as before
    assert (old / "recipe.json").read_text().strip() == '{"codebook": 0}'


def test_the_vocoder_fine_tuning_length_is_a_setting_of_the_run(tmp_path: Path) -> None:
    from comostream.training.recipe import GTA_STEPS, _check_settings

    def gta_steps(**kw: int) -> str:
        voc = {s.name: s for s in stages(tmp_path / "run", **kw)}["vocoder-gta"].args
        return voc[voc.index("--max-steps") + 1]

    assert gta_steps() == str(GTA_STEPS)
    assert gta_steps(gta_steps=16000) == "16000"
    run = tmp_path / "long"
    _check_settings(run, 0, 0, 16000)
    _check_settings(run, 0, 0, 16000)  # resumed with the same length
    with pytest.raises(SystemExit, match="started with"):
        _check_settings(run, 0)


def test_a_longer_teacher_decays_its_learning_rate_on_a_cosine(tmp_path: Path) -> None:
    from comostream.training.recipe import TEACHER_STEPS, _check_settings

    def teacher(**kw: int) -> list[str]:
        return {s.name: s for s in stages(tmp_path / "run", **kw)}["teacher"].args

    default = teacher()  # the shipped model's: a constant rate
    assert default[default.index("--max-steps") + 1] == str(TEACHER_STEPS)
    assert "--lr-schedule" not in default
    longer = teacher(teacher_steps=8000)
    assert longer[longer.index("--max-steps") + 1] == "8000"
    assert longer[longer.index("--lr-schedule") + 1] == "cosine"
    run = tmp_path / "long"
    _check_settings(run, 0, 0, 0, 8000)
    _check_settings(run, 0, 0, 0, 8000)  # resumed with the same teacher
    with pytest.raises(SystemExit, match="started with"):
        _check_settings(run, 0)

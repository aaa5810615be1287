"""The default-model recipe's stage list: order, and the GTA-fine-tuned vocoder in the export."""

from __future__ import annotations

from pathlib import Path

from comostream.training.recipe import stages


def test_stages_fine_tune_the_vocoder_on_the_models_own_mels(tmp_path: Path) -> None:
    before, acoustic, rest = stages(tmp_path / "run")
    names = [s.name for s in (*before, *acoustic, *rest)]
    assert names == [
        "corpus",
        "content",
        "features",
        "teacher",
        "distill",
        "vocoder",
        "acoustic-export",
        "gta",
        "vocoder-gta",
        "export",
        "quality",
    ]
    by = {s.name: s for s in (*before, *acoustic, *rest)}
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

"""``comostream bench busy``: bounded busy loops, and the default-options checks' report."""

from __future__ import annotations

import json
import os
import time

import pytest

import comostream
from comostream.bench.busy import busy_loops, format_busy_table, run_busy_check


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_busy_loops_spin_and_end() -> None:
    with busy_loops(2, seconds=30) as pids:
        assert len(pids) == 2
        time.sleep(0.5)
        ticks = [int(open(f"/proc/{p}/stat").read().split()[13]) for p in pids]
        assert all(_alive(p) for p in pids)
        assert sum(ticks) > 0  # they use CPU
    assert not any(_alive(p) for p in pids)


def test_busy_loops_end_by_themselves() -> None:
    with busy_loops(1, seconds=0.3) as pids:
        time.sleep(2.0)
        assert not _alive(pids[0])  # bounded even if the parent never ended it


def test_busy_loops_rejects_negative() -> None:
    with pytest.raises(ValueError, match="busy cores"), busy_loops(-1):
        pass


def test_unknown_check_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown check.*valid: convert"):
        run_busy_check(0, ("nope",))


def test_convert_check_with_a_busy_core(capsys: pytest.CaptureFixture[str]) -> None:
    """The real command, its default options, the other core busy: a report that can fail."""
    r = run_busy_check(1, ("convert",))
    c = r["checks"]["convert"]
    assert r["busy_cores"] == 1 and r["cpu_count"] == os.cpu_count()
    assert 0 < c["rtf"] < 5 and c["holds"] == (c["rtf"] < r["rtf_limit"])
    assert "convert --block 2" in format_busy_table(r)
    assert comostream.main(["bench", "busy", "--busy", "0", "--checks", "convert", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checks"]["convert"]["rtf"] > 0

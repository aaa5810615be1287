"""``comostream bench serve``: the real-time rule on synthetic rows, and a short run against a
``comostream serve`` child on a tiny random-weight model (N = 1, 2 for about a second each)."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from comostream import main
from comostream.bench.serve import realtime_streams, row_holds
from comostream.cli.bench import _stream_counts

from helpers import write_tiny_model

BLOCK_MS = 21.33


def row(n: int, dropped: int = 0, p99: float | None = 10.0, errors: int = 0) -> dict[str, Any]:
    return {"streams": n, "dropped_samples": dropped, "rtt_ms_p99": p99, "errors": ["x"] * errors}


def test_realtime_streams_is_the_largest_n_held_with_every_smaller_n() -> None:
    rows = [row(1), row(2), row(4, p99=20.0), row(8, dropped=512), row(16)]
    assert realtime_streams(rows, BLOCK_MS) == 4  # 16 passing after 8 failed does not count
    assert realtime_streams(list(reversed(rows)), BLOCK_MS) == 4  # the order measured is moot
    assert realtime_streams([row(1, dropped=1), row(2)], BLOCK_MS) == 0
    assert realtime_streams([row(1), row(2, p99=BLOCK_MS)], BLOCK_MS) == 1  # below, not equal
    assert realtime_streams([row(1), row(2, errors=1)], BLOCK_MS) == 1
    assert realtime_streams([row(1, p99=None)], BLOCK_MS) == 0  # no reply at all
    assert realtime_streams([row(1, p99=float("nan"))], BLOCK_MS) == 0
    assert realtime_streams([], BLOCK_MS) == 0
    assert row_holds(row(3), BLOCK_MS) and not row_holds(row(3, p99=30.0), BLOCK_MS)


def test_the_ns_stop_at_the_first_that_fails_unless_all(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from contextlib import contextmanager

    import comostream.bench.serve as bs

    @contextmanager
    def fake_server(*_: Any, **kw: Any) -> Any:
        assert kw["batch"] is True and kw["max_streams"] == 8
        yield bs.ServerProcess("ws://x/ws", 0, tmp_path / "log")

    measured: list[int] = []

    async def fake_measure(_s: Any, n: int, *_a: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        measured.append(n)
        full = {**row(n, dropped=512 if n >= 4 else 0), "rtt_ms_p50": 5.0, "server_cpu": 0.5}
        return full, {"block": 1024, "latency_ms": 46.0}

    monkeypatch.setattr(bs, "serve_process", fake_server)
    monkeypatch.setattr(bs, "_measure", fake_measure)
    r = bs.run_serve_bench([1, 2, 4, 8], checkpoint=tmp_path / "m.ckpt", seconds=0.1)
    assert measured == [1, 2, 4] and [x["realtime"] for x in r["rows"]] == [True, True, False]
    assert r["realtime_streams"] == 2 and r["batch"] is True
    measured.clear()
    r = bs.run_serve_bench([1, 2, 4, 8], checkpoint=tmp_path / "m.ckpt", stop_at_failure=False)
    assert measured == [1, 2, 4, 8] and r["realtime_streams"] == 2


def test_a_late_round_trip_with_nothing_dropped_is_measured_once_more(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from contextlib import contextmanager

    import comostream.bench.serve as bs

    @contextmanager
    def fake_server(*_: Any, **_kw: Any) -> Any:
        yield bs.ServerProcess("ws://x/ws", 0, tmp_path / "log")

    measured: list[int] = []
    late = {1: [60.0, 9.0], 2: [70.0, 80.0]}  # N=1: a hiccup, N=2: late twice

    async def fake_measure(_s: Any, n: int, *_a: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        measured.append(n)
        full = {**row(n, dropped=0), "rtt_ms_p50": 5.0, "server_cpu": 0.5}
        full["rtt_ms_p99"] = late[n].pop(0)
        return full, {"block": 1024, "latency_ms": 46.0}

    monkeypatch.setattr(bs, "serve_process", fake_server)
    monkeypatch.setattr(bs, "_measure", fake_measure)
    r = bs.run_serve_bench([1, 2, 4], checkpoint=tmp_path / "m.ckpt", seconds=0.1)
    assert measured == [1, 1, 2, 2]  # each late N twice; stopped after N=2 failed twice
    assert [x["realtime"] for x in r["rows"]] == [True, False]
    assert r["rows"][0]["first_try_rtt_ms_p99"] == 60.0 and r["realtime_streams"] == 1


def test_stream_counts_are_checked() -> None:
    assert _stream_counts("1,2,4,8,16") == [1, 2, 4, 8, 16]
    for bad in ("", "0", "1,,2", "a", "1,-2", "1000"):
        with pytest.raises(argparse.ArgumentTypeError):
            _stream_counts(bad)


def test_bench_serve_measures_a_tiny_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = write_tiny_model(tmp_path / "tiny.ckpt")
    threads_before = {t.ident for t in threading.enumerate()}
    argv = ["bench", "serve", "--checkpoint", str(ckpt), "--streams", "1,2", "--seconds", "1"]
    argv += ["--all"]  # both Ns even if a busy machine fails the first
    assert main([*argv, "--threads", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert "bench serve: 2 stream(s)" in err  # progress on stderr, the report alone on stdout
    assert (r["server"], r["threads"], r["sample_rate"]) == ("subprocess", 1, 48000)
    assert r["block_samples"] == 1024 and r["block_ms"] == pytest.approx(21.333, abs=1e-3)
    assert [x["streams"] for x in r["rows"]] == [1, 2]
    for x in r["rows"]:
        assert x["errors"] == []
        assert x["dropped_samples"] >= x["dropped_samples_max"] >= 0
        assert x["server_dropped_samples"] <= x["dropped_samples"]
        assert 0 < x["rtt_ms_p50"] <= x["rtt_ms_p99"] <= x["rtt_ms_max"]
        assert x["server_cpu"] is None or x["server_cpu"] >= 0
        assert 0.9 < x["wall_s"] < 10.0
        assert x["realtime"] == row_holds(x, r["block_ms"])
    first = r["rows"][0]
    assert first["dropped_samples"] == 0  # one stream of a tiny model keeps up
    assert r["batch"] is True and first["batch_mean"] >= 1.0 and first["step_ms_p50"] > 0
    assert first["cpu_sessions"] > 0 and first["cpu_batch"] > 0  # where the server's CPU goes
    assert r["realtime_streams"] >= 1
    assert r["realtime_streams"] == realtime_streams(r["rows"], r["block_ms"])
    # bounded: no client thread left behind, and the server child is gone
    assert {t.ident for t in threading.enumerate()} <= threads_before


def test_bench_serve_table_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from comostream.bench.serve import format_serve_table

    result = {
        "checkpoint": "m.ckpt",
        "server": "subprocess",
        "threads": 1,
        "device": "cpu",
        "cpu_count": 2,
        "sample_rate": 48000,
        "block_samples": 1024,
        "block_ms": BLOCK_MS,
        "latency_ms": 46.0,
        "seconds": 10.0,
        "realtime_streams": 1,
        "rows": [
            {
                **row(1),
                "dropped_samples_max": 0,
                "rtt_ms_p50": 5.0,
                "compute_ms_p99": 6.0,
                "server_cpu": 0.2,
                "server_cpu_per_stream": 0.2,
                "client_cpu": 0.02,
                "realtime": True,
            },
            {
                **row(2, dropped=2048, p99=None, errors=1),
                "dropped_samples_max": 2048,
                "rtt_ms_p50": None,
                "compute_ms_p99": None,
                "server_cpu": None,
                "server_cpu_per_stream": None,
                "client_cpu": 0.03,
                "realtime": False,
            },
        ],
    }
    table = format_serve_table(result)
    assert "20%" in table and "real-time streams" in table and table.rstrip().endswith("1")
    ckpt = tmp_path / "missing.ckpt"
    assert main(["bench", "serve", "--checkpoint", str(ckpt), "--sample-rate", "12345"]) == 1
    assert "sample rate 12345" in capsys.readouterr().err


def test_repeat_runs_the_whole_measurement_and_gives_the_distribution(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import comostream.bench.serve as bs
    from comostream.bench.serve import repeat_summary

    ckpt = write_tiny_model(tmp_path / "m.ckpt")
    held_up_to = iter([2, 1, 2])  # what each run holds: the machine's moments

    def fake_bench(streams: list[int], **_: Any) -> dict[str, Any]:
        top = next(held_up_to)
        rows = [{**row(n, dropped=0 if n <= top else 512), "realtime": n <= top} for n in streams]
        if top == 2:  # 2 held after the second measurement a late row gets
            rows[1]["first_try_rtt_ms_p99"] = 2 * BLOCK_MS
        return {"realtime_streams": realtime_streams(rows, BLOCK_MS), "rows": rows}

    monkeypatch.setattr(bs, "run_serve_bench", fake_bench)
    args = ["bench", "serve", "--checkpoint", str(ckpt), "--streams", "1,2", "--all"]
    assert main([*args, "--repeat", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["repeat"] == 3 and out["realtime_streams_each"] == [2, 1, 2]
    assert out["realtime_streams_median"] == 2 and out["realtime_streams_min"] == 1
    assert out["held"] == {"1": 3, "2": 2} and len(out["runs"]) == 3
    assert out["held_first_try"] == {"1": 3, "2": 0}
    held_up_to = iter([2, 2])
    monkeypatch.setattr(bs, "format_serve_table", lambda r: f"table of {r['realtime_streams']}")
    assert main([*args, "--repeat", "2"]) == 0
    text = capsys.readouterr().out
    assert "run 2 of 2:\ntable of 2" in text
    assert "real-time streams per run: 2, 2 (median 2, least 2)" in text
    assert "1: 2/2 (2 at the first try), 2: 2/2 (0 at the first try)" in text
    with pytest.raises(SystemExit):
        main([*args, "--repeat", "0"])
    assert "number of runs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no runs"):
        repeat_summary([])

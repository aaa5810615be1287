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

"""ovs/vlog.py: OVS log summaries for the upgrade record (pure file reading)."""

from __future__ import annotations

from pathlib import Path

from ovsndu.ovs import vlog


def line(t: str, n: int, level: str, text: str) -> str:
    return f"2026-11-30T20:{t}Z|{n:05d}|bridge|{level}|{text}"


def test_counts_levels_and_keeps_warnings_verbatim_bounded(tmp_path: Path) -> None:
    log = tmp_path / "ovs-vswitchd.log"
    lines = [line("00:00.000", 1, "INFO", "opened log file")]
    lines += [line("00:01.000", i, "ERR", f"bad {i} " + "x" * 400) for i in range(2, 40)]
    lines += ["  a continuation line", line("00:02.000", 40, "WARN", "last warning")]
    log.write_text("\n".join(lines) + "\n")
    s = vlog.summarise(log)
    assert s["counts"] == {"INFO": 1, "ERR": 38, "WARN": 1}
    assert len(s["lines"]) == vlog.MAX_LINES and s["lines_omitted"] == 19
    assert all(len(x) <= vlog.MAX_CHARS for x in s["lines"])
    assert s["lines"][0].startswith("2026-11-30T20:00:01.000Z|00002|bridge|ERR|bad 2 ")
    assert vlog.one_line(s) == "ERR 38, WARN 1, INFO 1"


def test_since_leaves_earlier_lines_out(tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    log.write_text("\n".join([line("00:00.000", 1, "ERR", "old"),
                              line("00:05.500", 2, "WARN", "new")]) + "\n")
    s = vlog.summarise(log, since="2026-11-30T20:00:05.000")
    assert s["counts"] == {"WARN": 1} and s["lines"][0].endswith("|new")


def test_missing_file_and_last_words(tmp_path: Path) -> None:
    assert "missing" in vlog.summarise(tmp_path / "none.log")
    assert vlog.one_line(vlog.summarise(tmp_path / "none.log")).startswith("no log")
    err = tmp_path / "x.stderr"
    err.write_text("one\n\ntwo\nthree\nfour\n")
    log = tmp_path / "x.log"
    log.write_text(line("00:00.000", 1, "ERR", "could not open") + "\n"
                   + line("00:00.100", 2, "INFO", "later") + "\n")
    said = vlog.last_words(err, log)
    assert said == "stderr: two | three | four; log: ERR bridge: could not open"
    assert vlog.last_words(None, None) == ""
    assert vlog.tail(tmp_path / "none") == []

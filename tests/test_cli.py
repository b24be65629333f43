"""The ``lbalgo`` command: ``simulate`` (every option, the JSON schema, errors) and ``bench``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import lbalgo
from lbalgo import cli
from lbalgo._progress import Progress, duration
from lbalgo.bench import _report
from lbalgo.bench._core import Table
from lbalgo.errors import InvalidOptionError
from lbalgo.simulate import ALGORITHMS, Scenario, json_report, simulate
from support.clocks import FakeClock


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def nginx_swrr(weights: Sequence[int], picks: int) -> list[int]:
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer), as a reference."""
    current = [0] * len(weights)
    chosen = []
    for _ in range(picks):
        best = None
        for i, weight in enumerate(weights):
            current[i] += weight
            if best is None or current[i] > current[best]:
                best = i
        assert best is not None
        current[best] -= sum(weights)
        chosen.append(best)
    return chosen


def simulate_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, "simulate", "--json", *args)
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


# -- the built-in scenario ---------------------------------------------------------------------


def test_default_scenario_prints_a_table_per_phase(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "simulate")
    assert code == 0
    assert err == ""  # a short run shows no progress bar
    names = ["steady", "failure", "recovery", "drain", "scale-out"]
    for number, name in enumerate(names, start=1):
        assert f"Phase {number}/5 {name}: " in out
    for algorithm in ALGORITHMS:
        assert algorithm in out.splitlines()[4]  # the first table's header names all three
    assert "192.0.2.12:80 fails its health check (mark_down)" in out
    assert "192.0.2.13:80 is set to weight 0 and drains" in out
    assert "192.0.2.14:80 and 192.0.2.15:80 join (update)" in out
    assert "drained after" in out
    assert "192.0.2.12:80 passes its health check again (mark_up)" in out
    assert "requests served: swrr 5,000, wlc 5,000, source-ip-hash 5,000" in out
    # the first table's rows: swrr's counts are nginx's sequence over 1,000 requests
    reference = nginx_swrr([5, 1, 1], 1000)
    first = out.split("Phase 1/5")[1].split("Phase 2/5")[0]
    for i, key in enumerate(["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"]):
        row = next(line for line in first.splitlines() if line.strip().startswith(key))
        cells = row.split()
        assert cells[4] == f"{reference.count(i):,}", row


def test_default_scenario_phases_do_their_job(capsys: pytest.CaptureFixture[str]) -> None:
    report = simulate_json(capsys)
    assert report["algorithms"] == list(ALGORITHMS)
    keys = report["backends"]
    assert keys == [f"192.0.2.{i}:80" for i in range(11, 16)]
    for entry in report["runs"]:
        steady, failure, recovery, drain, scale_out = entry["phases"]
        names = [p["name"] for p in entry["phases"]]
        assert names == ["steady", "failure", "recovery", "drain", "scale-out"]
        assert steady["counts"][3:] == [0, 0]  # not in the group yet
        assert steady["weights"] == [5, 1, 1, None, None]
        assert failure["up"][1] is False
        assert failure["counts"][1] == 0
        assert recovery["up"][1] is True
        assert recovery["counts"][1] > 0
        assert drain["weights"][2] == 0
        assert drain["counts"][2] == 0
        # the draining backend's connections end one by one and none are added
        assert drain["open_start"][2] > 0
        assert drain["drain"][-1] == 0
        assert all(a >= b for a, b in zip(drain["drain"], drain["drain"][1:], strict=False))
        assert drain["open_end"][2] == 0
        assert scale_out["weights"] == [5, 1, 0, 1, 1]
        assert scale_out["counts"][3] > 0
        assert scale_out["counts"][4] > 0
        for phase in entry["phases"]:
            assert sum(phase["counts"]) + phase["unserved"] == phase["requests"] == 1000
            assert phase["unserved"] == 0
            assert sum(phase["expected"]) == pytest.approx(1.0)
    swrr = report["runs"][0]
    assert swrr["algorithm"] == "swrr"
    # swrr keeps nginx's exact proportions in every phase (the remainder within one period)
    for phase in swrr["phases"]:
        for count, share in zip(phase["counts"], phase["expected"], strict=True):
            assert abs(count - share * 1000) < 5
    # a consistent hash moves fewer returning clients than round robin when one backend fails
    hashing = report["runs"][2]
    assert hashing["phases"][1]["moved"] < swrr["phases"][1]["moved"]


def test_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    report = simulate_json(capsys, "--algorithm", "wlc", "--weights", "3,2,1", "--requests", "60")
    assert set(report) == {"schema", "backends", "counts", "algorithms", "runs"}
    assert report["schema"] == 1
    assert report["algorithms"] == ["wlc"]
    n = len(report["backends"])
    assert n == 5
    assert all(isinstance(key, str) for key in report["backends"])
    assert len(report["counts"]) == n
    (entry,) = report["runs"]
    assert report["counts"] == entry["counts"]  # one algorithm: its own totals
    assert sum(entry["counts"]) + entry["unserved"] == 5 * 60
    phase_keys = {
        "name",
        "title",
        "requests",
        "weights",
        "up",
        "counts",
        "expected",
        "unserved",
        "open_start",
        "open_end",
        "drain",
        "moved",
        "ideal_moved",
    }
    for phase in entry["phases"]:
        assert set(phase) == phase_keys
        for field in ("weights", "up", "counts", "expected", "open_start", "open_end"):
            assert len(phase[field]) == n, field
    totals = [sum(p["counts"][i] for p in entry["phases"]) for i in range(n)]
    assert totals == entry["counts"]
    assert entry["phases"][0]["moved"] is None
    assert entry["phases"][1]["ideal_moved"] == pytest.approx(2 / 6)


def test_json_counts_add_up_over_algorithms(capsys: pytest.CaptureFixture[str]) -> None:
    report = simulate_json(capsys, "--requests", "50")
    assert len(report["runs"]) == 3
    for i in range(len(report["backends"])):
        assert report["counts"][i] == sum(entry["counts"][i] for entry in report["runs"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_alone(capsys: pytest.CaptureFixture[str], algorithm: str) -> None:
    code, out, _ = run(capsys, "simulate", "--algorithm", algorithm, "--requests", "200")
    assert code == 0
    assert f"200 requests per phase, {algorithm}\n" in out
    others = [name for name in ALGORITHMS if name != algorithm and name not in algorithm]
    assert not any(name in out.splitlines()[3] for name in others)
    assert f"requests served: {algorithm} 1,000" in out


def test_weights_and_requests(capsys: pytest.CaptureFixture[str]) -> None:
    report = simulate_json(
        capsys, "--algorithm", "swrr", "--weights", "2,3,4,1", "--requests", "100"
    )
    steady = report["runs"][0]["phases"][0]
    assert steady["weights"] == [2, 3, 4, 1, None, None]
    reference = nginx_swrr([2, 3, 4, 1], 100)
    assert steady["counts"][:4] == [reference.count(i) for i in range(4)]
    # the two newcomers get the median weight (low median of 2,3,4,1 is 2)
    assert report["runs"][0]["phases"][4]["weights"][4:] == [2, 2]


def test_two_backends_fail_and_drain_the_same_one(capsys: pytest.CaptureFixture[str]) -> None:
    report = simulate_json(capsys, "--algorithm", "swrr", "--weights", "1,1", "--requests", "80")
    drain = report["runs"][0]["phases"][3]
    assert drain["counts"] == [80, 0, 0, 0]


def test_no_backend_left_is_counted_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "simulate", "--weights", "0,3", "--requests", "30")
    assert code == 0
    assert "no backend (503)" in out
    report = simulate_json(capsys, "--weights", "0,3", "--requests", "30")
    for entry in report["runs"]:
        assert entry["phases"][1]["unserved"] == 30
        assert entry["phases"][2]["unserved"] == 0
        assert entry["phases"][3]["unserved"] == 30
        assert entry["unserved"] == 60


def test_seed_changes_the_traffic_but_not_the_schedule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ("--algorithm", "source-ip-hash", "--requests", "300")
    first = simulate_json(capsys, *base, "--seed", "1")
    again = simulate_json(capsys, *base, "--seed", "1")
    other = simulate_json(capsys, *base, "--seed", "2")
    assert first == again
    assert first["counts"] != other["counts"]


def test_simulate_api_refuses_bad_scenarios() -> None:
    with pytest.raises(InvalidOptionError, match="weights: need 2"):
        Scenario(weights=(5,))
    with pytest.raises(InvalidOptionError, match="requests: must be an integer"):
        Scenario(requests=0)
    with pytest.raises(InvalidOptionError, match="unknown algorithm 'random'"):
        Scenario(algorithms=("random",))
    with pytest.raises(InvalidOptionError, match="each at most once"):
        Scenario(algorithms=("swrr", "swrr"))
    runs = simulate(Scenario(requests=7, algorithms=("swrr",)))
    assert runs[0].phases[0].counts == (5, 1, 1, 0, 0)  # one whole period: exact
    assert sum(json_report(runs)["counts"]) == 5 * 7


# -- progress ------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    stream = _Terminal()
    clock = FakeClock(0.0)
    progress = Progress("simulating", 100_000, "requests", stream, clock=clock)
    for step in range(1, 26):
        clock.now = step / 5
        progress.advance(4000)
        if step == 5:  # 20,000 done in 1 s: 80,000 left at 20,000/s
            assert stream.getvalue().endswith(
                "] 20,000 of 100,000 requests (20%), 20,000 requests/s, about 4 s left"
            )
    progress.close()
    text = stream.getvalue()
    assert "\rsimulating [#####" in text
    assert "100,000 of 100,000 requests (100%)" in text
    assert text.endswith("simulating: 100,000 requests in 5 s".ljust(78) + "\n")
    quiet = _Terminal()
    short = Progress("simulating", 100, "requests", quiet, show_from=1000)
    short.advance(100)
    short.close()
    assert quiet.getvalue() == ""  # a short run needs no bar


def test_progress_of_an_unknown_or_underestimated_total() -> None:
    stream = io.StringIO()
    clock = FakeClock(0.0)
    unknown = Progress("bench swrr", None, "timings", stream, clock=clock)
    clock.now = 2.0
    unknown.advance(1000)
    assert stream.getvalue() == "bench swrr: 1,000 timings, 500 timings/s, 2 s so far\n"
    terminal = _Terminal()
    under = Progress("bench wlc", 10, "timings", terminal, clock=clock)
    clock.now = 3.0
    under.advance(20)  # more than the estimate: the bar stops short of 100%
    assert "(99%)" in terminal.getvalue()
    assert "about 0 s left" in terminal.getvalue()


def test_durations_read_naturally() -> None:
    assert [duration(s) for s in (0, 59.4, 60, 3599, 3600, 86399)] == [
        "0 s",
        "59 s",
        "1 min 00 s",
        "59 min 59 s",
        "1 h 00 min",
        "23 h 59 min",
    ]


def test_progress_on_a_pipe_only_for_long_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_PIPE_PROGRESS_FROM", 1000)
    code, out, err = run(capsys, "simulate", "--json", "--requests", "2000")
    assert code == 0
    json.loads(out)  # stdout stays pure JSON
    lines = err.splitlines()
    assert len(lines) == 10  # one line per tenth of the work
    assert all(line.startswith("simulating: ") for line in lines)
    assert all(re.search(r" requests/s, about \d+ (s|min \d\d s) left$", line) for line in lines)
    assert "\r" not in err
    code, out, err = run(capsys, "simulate", "--json", "--requests", "2000", "--no-progress")
    assert err == ""


# -- plot ----------------------------------------------------------------------------------------


def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "shares.png"
    code, _, err = run(capsys, "simulate", "--requests", "100", "--plot", str(target))
    assert code == 0
    assert err == f"wrote {target}\n"
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 10_000


def test_plot_without_matplotlib_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    code, out, err = run(capsys, "simulate", "--plot", str(tmp_path / "x.png"))
    assert code == 2
    assert out == ""  # refused before simulating
    assert err == ("lbalgo simulate: error: --plot needs matplotlib: pip install 'lbalgo[plot]'\n")


def test_plot_path_is_checked_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing" / "x.png"
    code, out, err = run(capsys, "simulate", "--requests", "20", "--plot", str(missing))
    assert (code, out) == (2, "")  # refused before simulating
    assert err == f"lbalgo simulate: error: --plot: no directory {tmp_path / 'missing'}\n"
    folder = tmp_path / "d.png"
    folder.mkdir()
    code, out, err = run(capsys, "simulate", "--requests", "20", "--plot", str(folder))
    assert (code, out) == (2, "")
    assert err == f"lbalgo simulate: error: --plot: {folder} is a directory\n"


def test_plot_of_500_backends_stays_readable(tmp_path: Path) -> None:
    from lbalgo.simulate import plotted_lines

    runs = simulate(Scenario(weights=tuple(range(1, 101)) * 4 + (1,) * 98, requests=2000))
    lines = plotted_lines(runs[0])
    labels = [label for label, _ in lines]
    assert len(lines) == 9
    assert labels[-1] == f"others ({len(runs[0].backends) - 8} backends)"
    members = sorted(i for _, indices in lines for i in indices)
    assert members == list(range(len(runs[0].backends)))  # every backend drawn exactly once
    heaviest = {f"192.0.2.{11 + i % 240}:{80 if i < 240 else 8081}" for i in (99, 199, 299, 399)}
    assert heaviest <= set(labels)  # the weight-100 backends have lines of their own
    target = tmp_path / "many.png"
    weights = ",".join(["3", "1"] * 249)
    argv = ["simulate", "--weights", weights, "--requests", "500", "--plot", str(target)]
    assert cli.main([*argv, "--algorithm", "wlc", "--json"]) == 0
    assert target.read_bytes()[:4] == b"\x89PNG"


# -- bad arguments -------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    [],
    ["frobnicate"],
    ["simulate", "--bogus"],
    ["simulate", "--weights", "5,x,1"],
    ["simulate", "--weights", "5,101"],
    ["simulate", "--weights", "5"],
    ["simulate", "--weights", "0,0,0"],
    ["simulate", "--weights", ""],
    ["simulate", "--weights", "5,-1"],
    ["simulate", "--weights", "2.5,1"],
    ["simulate", "--requests", "0"],
    ["simulate", "--requests", "-3"],
    ["simulate", "--requests", "ten"],
    ["simulate", "--requests", "99999999999"],
    ["simulate", "--algorithm", "random"],
    ["simulate", "--seed", "-1"],
    ["simulate", "--plot", "shares.jpg"],
    ["simulate", "--json", "extra"],
    ["bench", "--only", "nope"],
    ["bench", "--only", ","],
    ["bench", "--markdown", ""],
]


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=lambda a: " ".join(a) or "nothing")
def test_bad_arguments_give_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lbalgo")
    assert "error: " in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args", [["simulate", "--weights", "5,1,x"], ["simulate", "--requests", "0"], []]
)
def test_bad_arguments_through_python_m(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lbalgo", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_python_m_lbalgo_simulate() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lbalgo", "simulate", "--algorithm", "swrr", "--requests", "70"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Phase 5/5 scale-out" in done.stdout


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["simulate", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--algorithm", "--weights", "--requests", "--json", "--plot", "--seed"):
        assert option in out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("lbalgo ")


# -- bench ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("frozen_heap")
def test_bench_quick_smoke_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "bench.md"
    code, out, err = run(capsys, "bench", "--quick", "--markdown", str(target))
    assert code == 0, out + err
    markdown = target.read_text()
    assert markdown.startswith("# Benchmarks\n")
    for needle in ("median of 5 runs", "CPUs", "- Python: ", "- date: ", "quick"):
        assert needle in markdown
    for i, name in enumerate(_report.MODULES, 1):
        assert f"## {name}" in markdown
        assert f"running lbalgo.bench.{name} ({i}/{len(_report.MODULES)}) ..." in err
        assert re.search(rf"^bench {name}: done in (\d+ min )?\d+ s", err, flags=re.MULTILINE)
        assert f"=== {name} ===" in out
    assert "###" in markdown  # at least one module produced a table


@pytest.mark.usefixtures("frozen_heap")
def test_bench_only_one_module_as_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "bench.json"
    code, out, err = run(capsys, "bench", "--quick", "--only", "swrr", "--json", str(target))
    assert code == 0, err
    assert err.count("running lbalgo.bench.") == 1
    assert out.startswith("\n=== swrr ===\n")
    assert out.count("=== ") == 1
    # the progress lines count timed samples against the expected count for a quick run
    expected = _report.EXPECTED_SAMPLES["swrr", True]
    assert re.search(rf"^bench swrr: \d[\d,]* of {expected:,} timings \(\d+%\), ", err, re.M)
    assert f"wrote {target}" in err
    doc = json.loads(target.read_text())
    assert doc["quick"] is True
    assert doc["lbalgo"] == lbalgo.__version__
    assert {"machine", "cpus", "python", "date"} <= set(doc["environment"])
    (module,) = doc["modules"]
    assert module["name"] == "swrr"
    assert not module["failed"]
    (table,) = [t for t in module["tables"] if "ours / empty call" in t["columns"]]
    assert table["columns"][0] == "backends"
    assert all(isinstance(row[0], int) for row in table["rows"])
    assert table["better"]["ours / empty call"] == "lower"
    assert table["better"]["naive loop / ours (x faster)"] == "higher"
    assert "goal (issue 4)" not in table["better"]  # text, not a figure


def test_bench_output_paths_are_checked_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for option in ("--json", "--markdown"):
        code, out, err = run(capsys, "bench", option, str(tmp_path / "no" / "x"))
        assert code == 2
        assert (out, err) == (
            "",
            f"lbalgo bench: error: {option}: no directory {tmp_path / 'no'}\n",
        )
        code, out, err = run(capsys, "bench", option, " ")
        assert err == f"lbalgo bench: error: {option} needs a file name\n"


def test_report_json_has_no_nan_and_says_which_way_is_better() -> None:
    table = Table("t", ["backends", "moved / ideal", "scan / ours (x faster)", "note"])
    table.rows = [[10, float("nan"), 3.0, "x"], [20, float("inf"), 4.0, "y"]]
    doc = _report.json_report([_report.Section("m", [table])])
    text = json.dumps(doc, allow_nan=False)  # valid JSON: non-finite figures are null
    assert json.loads(text)["modules"][0]["tables"][0]["rows"][0] == [10, None, 3.0, "x"]
    assert doc["modules"][0]["tables"][0]["better"] == {
        "moved / ideal": "lower",
        "scan / ours (x faster)": "higher",
    }


def test_bench_suite_skips_missing_and_reports_broken_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = types.ModuleType("lbalgo.bench._broken_for_test")

    def explode(quick: bool = False) -> list[Table]:
        raise RuntimeError("boom")

    broken.run = explode  # type: ignore[attr-defined]
    fine = types.ModuleType("lbalgo.bench._fine_for_test")

    def one_table(quick: bool = False) -> list[Table]:
        return [Table("fine", ["quick"], [[quick]])]

    fine.run = one_table  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, broken.__name__, broken)
    monkeypatch.setitem(sys.modules, fine.__name__, fine)
    sections = _report.run_suite(
        ["_absent_for_test", "_broken_for_test", "_fine_for_test"], quick=True
    )
    absent, failed, ok = sections
    assert absent.note is not None
    assert absent.note.startswith("skipped: lbalgo.bench._absent_for_test is not part")
    assert not absent.failed
    assert failed.failed
    assert failed.note == "failed: RuntimeError: boom"
    assert [t.title for t in ok.tables] == ["fine"]
    markdown = _report.markdown_report(sections, quick=True)
    assert "*failed: RuntimeError: boom*" in markdown
    assert "| True |" in markdown


# -- benchmarks/run.py ---------------------------------------------------------------------------


def _load_script() -> types.ModuleType:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("benchmarks_run", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sized_tables() -> list[Table]:
    by_size = Table("cost", ["backends", "ours / empty", "naive / ours"])
    by_size.rows = [[3, 2.0, 3.0], [50, 2.5, 30.0], [500, 3.0, 250.0]]
    by_label = Table("peers", ["backends", "library", "lookup / ours", "note"])
    for n in (10, 100, 500):
        by_label.rows += [[n, "ours", 1.0, "-"], [n, "peer", n / 5, "-"]]
    too_few = Table("two sizes", ["backends", "x"], [[1, 1.0], [2, 2.0]])
    words = Table("words", ["operation", "x"], [["a", 1.0], ["b", 2.0], ["c", 3.0]])
    return [by_size, by_label, too_few, words]


def test_benchmark_script_picks_what_to_plot() -> None:
    script = _load_script()
    by_size, by_label, too_few, words = _sized_tables()
    metric, lines = script.series(by_size)
    assert metric == ""
    assert [name for name, _ in lines] == ["ours / empty", "naive / ours"]
    assert lines[1][1] == [(3.0, 3.0), (50.0, 30.0), (500.0, 250.0)]
    metric, lines = script.series(by_label)
    assert metric == "lookup / ours"
    assert lines == [
        ("ours", [(10.0, 1.0), (100.0, 1.0), (500.0, 1.0)]),
        ("peer", [(10.0, 2.0), (100.0, 20.0), (500.0, 100.0)]),
    ]
    assert script.series(too_few) == ("", [])
    assert script.series(words) == ("", [])


def test_every_benchmark_panel_reads_in_one_direction() -> None:
    script = _load_script()
    _, by_label, too_few, _ = _sized_tables()
    mixed = Table("cost", ["backends", "ours / empty", "naive / ours (x faster)", "moved"])
    mixed.rows = [[3, 2.0, 3.0, 0.1], [50, 2.5, 30.0, 0.2], [500, 3.0, 250.0, 0.3]]
    lower, higher = script.panels(mixed)
    assert lower[0] == "cost\n↓ lower is better"
    assert lower[2] == "lower is better"
    assert [name for name, _ in lower[3]] == ["ours / empty", "moved"]
    assert higher[0] == "cost\n↑ higher is better"
    assert [name for name, _ in higher[3]] == ["naive / ours (x faster)"]
    ((title, xlabel, ylabel, lines),) = script.panels(by_label)
    assert (title, xlabel, ylabel) == (
        "peers\n↓ lower is better",
        "backends",
        "lookup / ours (lower is better)",
    )
    assert [name for name, _ in lines] == ["ours", "peer"]
    assert script.panels(too_few) == []


def test_benchmark_script_writes_markdown_and_picture(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _load_script()
    sections = [
        _report.Section("swrr", _sized_tables()),
        _report.Section("ledger", note="skipped: lbalgo.bench.ledger needs redis"),
    ]
    monkeypatch.setattr(script, "run_suite", lambda *args, **kwargs: sections)
    target = tmp_path / "benchmarks.md"
    assert script.main(["--output", str(target)]) == 0
    markdown = target.read_text()
    assert markdown.startswith("# Benchmarks\n")
    assert "- command: `python benchmarks/run.py`" in markdown
    assert "![Benchmark figures](benchmarks.png)" in markdown
    assert markdown.index("![Benchmark") < markdown.index("## swrr")
    assert "*skipped: lbalgo.bench.ledger needs redis*" in markdown
    assert "| 500 | peer | 100 | - |" in markdown
    assert (tmp_path / "benchmarks.png").read_bytes()[:4] == b"\x89PNG"
    # without matplotlib: the Markdown alone, and no stale picture left behind
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert script.main(["--output", str(target)]) == 0
    assert not (tmp_path / "benchmarks.png").exists()
    assert "![Benchmark" not in target.read_text()
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_a_reader_that_goes_away_is_not_an_error() -> None:
    weights = ",".join(["1"] * 300)  # tables far larger than a pipe's buffer
    command = ["simulate", "--algorithm", "swrr", "--weights", weights, "--requests", "300"]
    process = subprocess.Popen(
        [sys.executable, "-m", "lbalgo", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline().startswith(b"lbalgo simulate: 300 backends")
    process.stdout.close()  # as `| head -1` does
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert err == b""

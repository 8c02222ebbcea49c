"""The run records' store, on its own: shared homes, interrupted runs, damaged records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faas.protocol.messages import RunFinished
from faas.scheduler.jobs import JobStore


def test_a_second_scheduler_on_the_home_leaves_running_runs_alone(tmp_path: Path) -> None:
    first = JobStore(tmp_path / "runs")
    first.start("run-1", ref="main", namespace="n", project="p")
    second = JobStore(tmp_path / "runs")  # e.g. `faas job ls` while `faas submit` runs
    assert second.get("run-1").status == "running"
    second.close()
    first.finish("run-1", RunFinished(run_id="run-1", status="success", commit="c"))
    first.close()
    third = JobStore(tmp_path / "runs")
    assert third.get("run-1").status == "success"
    third.close()


def test_runs_cut_off_by_a_stop_are_marked_failed_by_the_next_owner(tmp_path: Path) -> None:
    first = JobStore(tmp_path / "runs")
    first.start("run-2", ref="main", namespace="n", project="p")
    for handle in [*first._logs.values(), first._lock]:  # the scheduler died, closing nothing
        handle.close()
    second = JobStore(tmp_path / "runs")
    record = second.get("run-2")
    assert record.status == "failed" and "scheduler stopped" in (record.error or "")
    second.close()


def test_damaged_or_copied_records_do_not_stop_the_scheduler(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "run-a").mkdir(parents=True)
    (runs / "run-a" / "run.json").write_text(json.dumps({"status": "running"}))  # no run_id
    (runs / "run-b").mkdir()
    (runs / "run-b" / "run.json").write_text("[1, 2")  # cut short
    (runs / "run-c").mkdir()
    (runs / "run-c" / "run.json").write_text(json.dumps({"run_id": "run-a", "status": "running"}))
    store = JobStore(runs)
    assert json.loads((runs / "run-a" / "run.json").read_text())["status"] == "failed"
    assert json.loads((runs / "run-c" / "run.json").read_text())["status"] == "failed"
    store.close()


def test_a_record_that_cannot_be_written_is_logged_and_the_store_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    from faas.protocol.messages import TaskEvent

    jobs = JobStore(tmp_path / "runs")
    jobs.start("run-3", ref="main", namespace="n", project="p", nodes=["a"])
    jobs.start("run-4", ref="main", namespace="n", project="p", nodes=["a"])
    shutil.rmtree(tmp_path / "runs" / "run-3")  # its directory is gone under it
    jobs.record(TaskEvent(run_id="run-3", node="a", state="running"))
    jobs.record(TaskEvent(run_id="run-4", node="a", state="running"))
    jobs.flush()
    assert "could not write a run record" in caplog.text
    jobs.finish("run-4", RunFinished(run_id="run-4", status="success", commit="c"))
    assert jobs.get("run-4").status == "success"
    assert json.loads((tmp_path / "runs" / "run-4" / "run.json").read_text())["nodes"]["a"][
        "state"] == "running"
    jobs.close()


def test_pages_of_events_join_up_to_every_event_once(tmp_path: Path) -> None:
    from faas.protocol.messages import LogLine

    jobs = JobStore(tmp_path / "runs")
    jobs.start("run-5", ref="main", namespace="n", project="p", nodes=["a"])
    for i in range(100):
        jobs.record(LogLine(run_id="run-5", node="a", stream="stdout", line=f"{i:03d}" + "x" * 97))
    pages, offset = [], 0
    while offset is not None:
        page, offset = jobs.page("run-5", offset, max_bytes=1000)
        assert page, "every page has at least one event"
        pages.append(page)
    assert len(pages) > 10
    assert [e.line for page in pages for e in page] == [e.line for e in jobs.events("run-5")]
    assert [e.line[:3] for e in jobs.events("run-5")] == [f"{i:03d}" for i in range(100)]
    jobs.close()


def test_a_log_budget_passes_lines_up_to_its_limit_then_says_so_once() -> None:
    from faas.protocol.messages import LogLine
    from faas.scheduler.jobs import LogBudget

    budget = LogBudget(25)
    line = LogLine(run_id="r", node="a", stream="stdout", line="x" * 9)  # 10 bytes with \n
    assert budget.admit(line) is line and budget.admit(line) is line
    marker = budget.admit(line)
    assert marker is not None and marker.stream == "stderr" and "more than 25 B" in marker.line
    assert budget.admit(line) is None and budget.admit(line) is None
    assert budget.dropped == 3


def test_an_unreadable_run_record_is_one_clear_error_naming_it(tmp_path: Path) -> None:
    from faas.protocol.errors import InvalidInput

    runs = tmp_path / "runs"
    (runs / "run-d").mkdir(parents=True)
    (runs / "run-d" / "run.json").write_text(json.dumps({"run_id": "run-d", "status": "lost"}))
    jobs = JobStore(runs)
    with pytest.raises(InvalidInput, match="the record of run 'run-d' .* is unreadable"):
        jobs.get("run-d")
    assert jobs.recent() == []  # listing skips it and goes on
    jobs.close()

"""The run view of `faas submit`: a live table on terminals, plain lines elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from faas.client.progress import LiveView, PlainView
from faas.protocol.messages import LogLine, TaskEvent

EVENTS = [
    TaskEvent(run_id="r", node="a", state="queued"),
    TaskEvent(run_id="r", node="a", state="running", worker="w-1"),
    LogLine(run_id="r", node="a", stream="stdout", line="hello [not markup]"),
    TaskEvent(run_id="r", node="a", state="retrying", error="used 2 GiB, over its limit"),
    TaskEvent(run_id="r", node="a", state="done", worker="w-1", rows=42),
    TaskEvent(run_id="r", node="b", state="warning", error="model 'b' is slow [x]"),
    TaskEvent(run_id="r", node="good", state="done", worker="w-1", passed=True),
    TaskEvent(run_id="r", node="bad", state="warning", error="expectation 'bad' failed",
              passed=False),
]


def test_plain_view_prints_lines_and_states() -> None:
    out = io.StringIO()
    with PlainView(out) as view:
        for ev in EVENTS:
            view.update(ev)
    text = out.getvalue()
    assert "  [a] hello [not markup]" in text
    assert "a: running on w-1" in text and "a: done (42 rows)" in text
    assert "a: retrying: used 2 GiB, over its limit" in text
    assert "b: warning: model 'b' is slow [x]" in text
    # Expectations read as passed or failed, never "done (0 rows)".
    assert "good: passed\n" in text and "bad: failed\n" in text
    assert "0 rows" not in text
    assert "queued" not in text


def test_live_view_shows_every_function_and_the_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with LiveView("r", ["a", "b"], console=console) as view:
        for ev in EVENTS:
            view.update(ev)
    text = out.getvalue()
    assert "[a] hello [not markup]" in text  # user text is not read as markup
    final = text[text.rindex("run r"):]
    assert "done" in final and "42" in final and "w-1" in final
    assert "warning: model 'b' is slow [x]" in final
    rows = {line.split("│")[1].strip(): line for line in final.splitlines() if line.count("│") > 3}
    assert "passed" in rows["good"] and "failed" in rows["bad"] and "done" not in rows["bad"]

"""The web console in a real headless Chromium (Debian's, driven by Playwright): sign in,
query a branch and a tag, page through 100,000 rows, export CSV, see a branch's diff, watch
a run's log line arrive while its function runs, a reader without a cancel button, a bad
token refused. Each page's screenshot goes to docs/console/ for the README."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    ROOT,
    Cluster,
    Gate,
    add_user,
    gated_project,
    import_territories,
    scheduler_only,
)

pytestmark = pytest.mark.timeout(300)

SHOTS = ROOT / "docs" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machines' notes have it: no sandbox for root, and nothing of Google's reached.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
BIG_ROWS = 100_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, example_data: Path) -> Iterator[Cluster]:
    """main: adventure.territories (then reduced to Europe) and adventure.big (100,000
    rows); tag v1 before the reduction; branch dev with one more table."""
    tmp = tmp_path_factory.mktemp("console-browser")
    with scheduler_only(tmp, args=["--http", "127.0.0.1:0"]) as c:
        c.add_worker(tmp, "w")
        c.wait_workers(1)
        import_territories(c, example_data)
        c.faas("tag", "create", "v1", check=True)
        europe = tmp / "europe.csv"
        lines = (example_data / "territories.csv").read_text().splitlines()
        europe.write_text("\n".join([lines[0], *[ln for ln in lines[1:] if "Europe" in ln]]))
        c.faas("table", "import", "adventure.territories", str(europe), check=True)
        big = tmp / "big.parquet"
        pq.write_table(pa.table({"n": pa.array(range(BIG_ROWS), pa.int64()),
                                 "label": [f"row {i}" for i in range(BIG_ROWS)]}), big)
        c.faas("table", "import", "adventure.big", str(big), check=True)
        c.faas("branch", "create", "dev", "--from", "main", check=True)
        c.faas("table", "import", "adventure.more", str(example_data / "territories.csv"),
               "--ref", "dev", check=True)
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _console(c: Cluster) -> str:
    url: str = c.json("info")["console"]
    return url


def _page(browser: Any, c: Cluster, token: str | None = None, accept_downloads: bool = False) -> Any:
    """A new page, signed in with ``token`` (default: the admin's)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  accept_downloads=accept_downloads)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(_console(c))
    page.get_by_test_id("signin-token").fill(token or c.token_file.read_text().strip())
    page.get_by_test_id("signin-submit").click()
    page.get_by_test_id("nav-sql").wait_for()
    return page


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _run_sql(page: Any, sql: str, ref: str | None = None) -> None:
    if ref is not None:
        page.get_by_test_id("ref-picker").select_option(ref)
    editor = page.get_by_test_id("sql-editor").locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(sql)
    page.keyboard.press("Control+Enter")


def _grid_text(page: Any) -> str:
    text: str = page.get_by_test_id("results").inner_text()
    return text


def test_sign_in_refuses_a_bad_token(served: Cluster, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(_console(served))
    _shot(page, "signin")
    page.get_by_test_id("signin-token").fill("admin:" + "0" * 32)
    page.get_by_test_id("signin-submit").click()
    error = page.get_by_test_id("error")
    error.wait_for()
    assert "token" in error.inner_text()
    assert page.get_by_test_id("nav-sql").count() == 0 or not page.get_by_test_id(
        "nav-sql").is_visible()
    context.close()


def test_a_query_on_main_and_on_a_tag_sees_different_rows(served: Cluster, browser: Any) -> None:
    page = _page(browser, served)
    page.get_by_test_id("namespace-picker").select_option("adventure")
    sql = "SELECT Country, Continent FROM territories ORDER BY Country"
    _run_sql(page, sql, "main")
    page.wait_for_function("document.querySelector('[data-testid=results]').innerText.includes('Europe')")
    main_rows = _grid_text(page)
    assert "North America" not in main_rows
    _shot(page, "sql")
    _run_sql(page, sql, "v1")
    page.wait_for_function(
        "document.querySelector('[data-testid=results]').innerText.includes('North America')")
    assert "Europe" in _grid_text(page)
    page.context.close()


def test_paging_through_100000_rows_and_exporting_them(served: Cluster, browser: Any,
                                                      tmp_path: Path) -> None:
    page = _page(browser, served, accept_downloads=True)
    page.get_by_test_id("namespace-picker").select_option("adventure")
    _run_sql(page, "SELECT n, label FROM big ORDER BY n", "main")
    count = page.get_by_test_id("results-count")
    page.wait_for_function(
        "document.querySelector('[data-testid=results-count]').innerText.includes('1–100')")
    assert "row 0" in _grid_text(page)
    for page_no in range(2, 5):
        page.get_by_test_id("results-next").click()
        first = (page_no - 1) * 100
        page.wait_for_function(
            "document.querySelector('[data-testid=results-count]').innerText.includes("
            f"'{first + 1}–{first + 100}')")
    # The fourth page of 100, fetched by itself: it starts at row 300.
    page.wait_for_function(
        "document.querySelector('[data-testid=results]').innerText.includes('row 300')")
    assert "row 299" not in _grid_text(page) and count.get_attribute("data-more") == "true"
    with page.expect_download() as caught:
        page.get_by_test_id("export-csv").click()
    path = tmp_path / "export.csv"
    caught.value.save_as(path)
    lines = path.read_text().splitlines()
    assert len(lines) == BIG_ROWS + 1 and lines[-1] == f'{BIG_ROWS - 1},"row {BIG_ROWS - 1}"'
    page.context.close()


def test_the_catalog_shows_a_branchs_diff(served: Cluster, browser: Any) -> None:
    page = _page(browser, served)
    page.get_by_test_id("nav-catalog").click()
    page.get_by_test_id("branches").wait_for()
    page.get_by_test_id("diff-from").select_option("main")
    page.get_by_test_id("diff-to").select_option("dev")
    page.get_by_test_id("diff-run").click()
    page.wait_for_function("document.querySelector('[data-testid=diff]').innerText.includes('adventure.more')")
    assert "added" in page.get_by_test_id("diff").inner_text()
    _shot(page, "catalog")
    page.goto(f"{_console(served)}#/catalog/table/adventure.big?ref=main")
    page.get_by_test_id("table-schema").wait_for()
    page.wait_for_function(
        "document.querySelector('[data-testid=table-preview]').innerText.includes('row 0')")
    assert "100000" in page.get_by_test_id("table-rows").inner_text().replace(",", "")
    _shot(page, "table")
    page.context.close()


def test_a_run_shows_its_log_live_and_a_reader_cannot_cancel(
    served: Cluster, browser: Any, tmp_path: Path, gate: Gate,
) -> None:
    project = gated_project(tmp_path, gate)
    run_id = served.faas("submit", str(project), "-n", "adventure", "--detach",
                         check=True).stdout.strip()
    page = _page(browser, served)
    page.goto(f"{_console(served)}#/runs/{run_id}")
    log = page.get_by_test_id("run-log")
    page.wait_for_function(
        "document.querySelector('[data-testid=run-log]').innerText.includes('before the gate')")
    assert "after the gate" not in log.inner_text()
    assert page.get_by_test_id("run-cancel").is_visible()  # an admin may
    page.get_by_test_id("run-dag").wait_for()
    _shot(page, "run")

    reader = add_user(served, tmp_path, "rita", "reader").read_text().strip()
    as_reader = _page(browser, served, token=reader)
    as_reader.goto(f"{_console(served)}#/runs/{run_id}")
    as_reader.get_by_test_id("run-log").wait_for()
    assert as_reader.get_by_test_id("run-cancel").count() == 0 or not as_reader.get_by_test_id(
        "run-cancel").is_visible()

    gate.touch()
    page.wait_for_function(
        "document.querySelector('[data-testid=run-log]').innerText.includes('after the gate')")
    page.get_by_test_id("nav-runs").click()
    page.get_by_test_id("runs").wait_for()
    page.wait_for_function(f"document.querySelector('[data-testid=runs]').innerText.includes('{run_id}')")
    _shot(page, "runs")
    page.get_by_test_id("nav-cluster").click()
    page.get_by_test_id("workers").wait_for()
    _shot(page, "cluster")
    page.context.close()
    as_reader.context.close()

"""`snakemake --report` shows everything, checked in a real headless browser (Chromium driven by
Playwright): the workflow description, every table as HTML (a cell is read back from the rendered page),
every figure and training curve as PNG (the image is decoded by the browser).

Needs Chromium: installed with apt-get when missing and run as root (as the SLURM test installs its
cluster); skipped otherwise, with the reason."""

import os
import shutil
import subprocess

import pytest
from conftest import run_snakemake

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            subprocess.run(install, capture_output=True)
        return shutil.which("chromium")
    return None


@pytest.fixture(scope="module")
def page(micro_done):
    playwright = pytest.importorskip("playwright.sync_api")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium, and no root + apt-get to install it")
    run_snakemake(["--configfile", "configs/micro.yaml", "--report", "report.html"], micro_done)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.goto((micro_done / "report.html").as_uri())
        yield pg
        browser.close()


def _until(page, found, seconds=20.0):
    """``found()`` once it is truthy (the page renders a result asynchronously: under load, a fixed wait is
    not enough), or its last value after ``seconds``."""
    for _ in range(int(seconds / 0.1)):
        if value := found():
            return value
        page.wait_for_timeout(100)
    return found()


def _show(page, category, item, found, attempts=3, seconds=10.0):
    """The report afresh, then a result category, then the view button of one result; ``found()`` once the
    result is shown. A click the app has not yet bound (right after a reload, under load: the address gets
    its "#", nothing opens) is made again, from a fresh page, up to ``attempts`` times, each waiting longer
    (10, 20, 30 s)."""
    for attempt in range(1, attempts + 1):
        page.goto(page.url.split("#")[0])
        page.get_by_role("link", name=category, exact=True).click()
        page.locator("tr", has_text=item).first.get_by_role("link").first.click()
        if value := _until(page, found, seconds * attempt):  # longer each time: a slow render is not lost
            return value
    return found()


def test_landing_page_describes_the_workflow(page):
    body = page.inner_text("body")
    assert "How transferable are features in deep neural networks?" in body
    assert "data source: demo" in body


@pytest.mark.parametrize("table, cell", [("effects", "coadaptation"), ("table1", "authors_nets_paired"),
                                         ("runs", "A1B_ft"), ("paper_comparison", "natman"),
                                         ("similarity_by_layer", "conv5")])
def test_tables_are_shown_as_tables(page, table, cell):
    frames = _show(page, "Tables", table, lambda: [f for f in page.frames if f.url.startswith("data:text/html")
                                                   and f"filename={table}.html" in f.url])
    assert frames, [f.url[:80] for f in page.frames]
    cells = frames[0].locator("td", has_text=cell)
    assert cells.count() > 0 and cells.first.is_visible()


@pytest.mark.parametrize("category, item", [("Figures", "fig2.png"), ("Figures", "fig3.png"),
                                            ("Figures", "claims.png"), ("Figures", "similarity.png"),
                                            ("Training curves", "rand0")])
def test_figures_are_shown_as_images(page, category, item):
    shown = _show(page, category, item, lambda: [i for i in page.locator("img").all() if i.is_visible()
                                                 and (i.get_attribute("src") or "").startswith("data:image/png")])
    assert shown
    width = _until(page, lambda: shown[0].evaluate("e => e.complete && e.naturalWidth"))
    assert width > 400  # decoded by the browser, not a broken image

"""The MLflow UI as a person uses it: the quickstart sweep logged to a real `mlflow server` on
127.0.0.1, opened in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Screenshots go to the test's folder, and also to $KDSEARCH_SCREENSHOTS when set (the README's
picture is made that way).
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ensure_local_ray, free_port
from mlflow import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from kdsearch.search.record import Objective
from kdsearch.sweeper.run import SweepOptions, run_sweep
from kdsearch.tracking import runs as tracking

pytestmark = pytest.mark.slow  # Ray, subprocesses or a browser: `pytest -m "not slow"` skips them

QUICKSTART = Path(__file__).parent.parent / "search_spaces" / "quickstart.yaml"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    assert not missing, f"{missing} missing: apt-get install chromium chromium-driver (.ci/run does)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    # No background traffic: this machine has no network, and Chromium would retry forever.
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-dev-shm-usage",
        "--window-size=1500,950",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart sweep, logged to a real MLflow server on loopback (as a team would share one)."""
    ensure_local_ray()
    root = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(store).search_experiments()  # create the store, so the server starts on it
    proc, url = tracking.start_ui_server(store, port=free_port())
    try:
        # 4 of the quickstart's 8 trials: enough to compare in the UI, half the suite time
        # (and a teacher of 10 epochs, not 30: the UI shows the same things)
        opts = SweepOptions(
            storage=str(root / "sweeps"), tracking_uri=url, verbose=0, num_samples=4, overrides={"teacher_epochs": 10}
        )
        os.environ["KDSEARCH_CACHE"] = str(root / "cache")
        summary = run_sweep(QUICKSTART, opts, log=lambda _: None)
        yield url, summary, MlflowClient(url), root
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _wait_text(driver, *needles, timeout=30):
    try:
        WebDriverWait(driver, timeout).until(lambda d: all(n in d.find_element(By.TAG_NAME, "body").text for n in needles))
    except TimeoutException:
        text = driver.find_element(By.TAG_NAME, "body").text
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"{driver.current_url} never showed {missing}; it shows: {text[:1500]!r}") from None
    return driver.find_element(By.TAG_NAME, "body").text


def _none_visible(driver, by, selector) -> bool:
    try:
        return not any(e.is_displayed() for e in driver.find_elements(by, selector))
    except WebDriverException:  # an element went stale while we looked: look again
        return False


def _close_assistant(driver):
    selector = "button[aria-label='Close']"
    for button in driver.find_elements(By.CSS_SELECTOR, selector):
        try:
            button.click()
        except Exception:  # noqa: BLE001 - an overlay that is already gone
            pass
    try:
        WebDriverWait(driver, 5).until(lambda d: _none_visible(d, By.CSS_SELECTOR, selector))
    except TimeoutException:
        pass  # a close button that belongs to the page itself, not an overlay


def _shot(driver, tmp_path, name):
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("KDSEARCH_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["KDSEARCH_SCREENSHOTS"]) / name)


def test_every_trial_is_listed_with_its_metrics(browser, quickstart, tmp_path):
    url, summary, client, _ = quickstart
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("kdsearch.role") == "trial"]
    assert len(trials) == 4

    # The address `kdsearch ui` prints opens the runs table.
    address = tracking.experiment_urls(url, url, "quickstart")["quickstart"]
    browser.get(address)
    _wait_text(browser, "quickstart", "matching runs")
    _close_assistant(browser)
    # The trials are nested under the sweep's parent run: open it, as a person clicks its "+".
    parent_row = f"div[role='row'][row-id='{summary.parent_run_id}']"
    _click(browser, By.CSS_SELECTOR, f"{parent_row} button[data-component-id*='runnamecellrenderer']")
    _wait_text(browser, "5 matching runs", *[f"trial_{r.data.tags['kdsearch.trial_id']}" for r in trials])
    _show_columns(browser, ["val/best_acc", "alpha"])
    grid = browser.find_element(By.CSS_SELECTOR, "[role='grid'], [role='treegrid']").text
    assert "val/best_acc" in grid and "alpha" in grid, grid[:800]  # columns a person compares trials on
    _shot(browser, tmp_path, "mlflow-trials.png")

    for run in trials:  # each trial's page shows its settings and its metrics
        browser.get(f"{url}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
        page = _wait_text(browser, "val/acc", "temperature", "alpha")
        assert str(run.data.metrics["val/acc"]) in page and run.data.params["temperature"] in page
    _shot(browser, tmp_path, "mlflow-trial.png")


def test_parent_run_shows_best_config_metrics_and_report_plots(browser, quickstart, tmp_path):
    url, summary, client, _ = quickstart
    exp = client.get_experiment_by_name("quickstart")
    parent = summary.parent_run_id
    browser.get(f"{url}/#/experiments/{exp.experiment_id}/runs/{parent}")
    page = _wait_text(browser, "test/acc", "compression/ratio", "best.temperature")
    assert str(client.get_run(parent).data.metrics["test/acc"]) in page

    browser.get(f"{url}/#/experiments/{exp.experiment_id}/runs/{parent}/artifacts/report/best_so_far.png")
    for plot in ("best_so_far.png", "importances.png", "acc_vs_temperature.png"):
        _click_artifact(browser, plot)
        _wait_text(browser, f"report/{plot}")
        WebDriverWait(browser, 30).until(
            lambda d: any(
                d.execute_script("return arguments[0].naturalWidth", img) > 300 for img in d.find_elements(By.TAG_NAME, "img")
            )
        )  # the PNG was fetched from the server and decoded
        if plot == "best_so_far.png":
            _close_assistant(browser)
            _shot(browser, tmp_path, "mlflow-report.png")
    _click_artifact(browser, "best_config.yaml")
    _wait_text(browser, "temperature:", "alpha:")


def _show_columns(driver, names):
    """Tick metric and parameter columns in the runs table's "Columns" menu."""
    _click(driver, By.XPATH, "//button[normalize-space()='Columns']")
    for name in names:
        _click(
            driver,
            By.XPATH,
            f"//span[@title='{name}']/preceding-sibling::span[contains(@class, 'checkbox')] | //span[@title='{name}']",
        )
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    WebDriverWait(driver, 10).until(
        lambda d: _none_visible(d, By.XPATH, f"//span[@title='{names[0]}']/preceding-sibling::span[contains(@class, 'checkbox')]")
    )


def _click(driver, by, selector):
    """Click the first visible match, as a person would: scrolled into view, retried while the
    page is still rendering (stale, covered or not yet interactable)."""

    def click(d) -> bool:
        for element in d.find_elements(by, selector):
            try:
                if element.is_displayed():
                    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
                    element.click()
                    return True
            except WebDriverException:
                continue
        return False

    WebDriverWait(driver, 30, poll_frequency=0.5).until(click)


def _click_artifact(driver, name):
    """Select a file in the run's artifact tree."""
    _click(driver, By.XPATH, f"//*[normalize-space(text())='{name}']")


def _large_sweep_io():
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "large_sweep_io.py"
    spec = importlib.util.spec_from_file_location("large_sweep_io", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_sweep_of_2000_trials_is_compared_from_its_parent_run(browser, quickstart, tmp_path):
    """Issue 31: the quickstart's folder grown to 2,000 trials (as Ray Tune leaves them) and synced
    to an empty store: the parent run's page lists the 10 best, linked to MLflow's comparison of them."""
    from kdsearch.search.folder import SweepFolder
    from kdsearch.search.record import ranked
    from kdsearch.sweeper.mirror import sync_sweep

    _, summary, _, _ = quickstart
    folder = tmp_path / "big" / "quickstart"
    _large_sweep_io().grow(Path(summary.sweep_dir), folder, 2000, epochs=2)
    store = f"sqlite:///{tmp_path / 'big.db'}"
    sync_sweep(SweepFolder(folder), tracking_uri=store)
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("quickstart")
    parent = client.search_runs([exp.experiment_id], "tags.`kdsearch.role` = 'sweep'")[0]
    trials = SweepFolder(folder).trials()
    top = ranked(trials, Objective("val/acc", "max"))[:10]
    names = [f"trial_{t.trial_id}" for t in top]
    ids = json.loads(parent.data.tags[tracking.TOP_TAG])
    assert [client.get_run(i).info.run_name for i in ids] == names  # best first, as best/ ranks them

    proc, url = tracking.start_ui_server(store, port=free_port())
    try:
        browser.get(f"{url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}")
        _wait_text(browser, "Top 10 of 2000 trials by val/acc", names[0], timeout=60)
        _close_assistant(browser)
        _click(browser, By.XPATH, "//*[normalize-space()='Show more']")  # the description opens folded
        page = _wait_text(browser, *names)
        assert f"{top[0].score(Objective('val/acc', 'max')):.4f}" in page
        _shot(browser, tmp_path, "mlflow-top-trials.png")
        before = set(browser.window_handles)
        _click(browser, By.XPATH, "//a[normalize-space()='compare them side by side']")  # opens a new tab
        WebDriverWait(browser, 30).until(lambda d: set(d.window_handles) - before)
        browser.switch_to.window((set(browser.window_handles) - before).pop())
        assert "/compare-runs?runs=" in browser.current_url
        _wait_text(browser, "Comparing 10 Runs", "Run details", "temperature", *names, timeout=60)
        _shot(browser, tmp_path, "mlflow-compare-top.png")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)

"""`twotower serve --channels X.yaml --inspector` in a real headless chromium: the channel column
shows, for every merged item, the real channels that found it (and its rank in each) — the same
breakdown the service's /retrieve returns. Screenshot in the test's tmp dir."""
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from browser import chromium_driver, save_screenshot

KEY = "s3cret"
QUERY = {"user_id": 7, "query_text": "cheap wedding ring"}


@pytest.fixture(scope="module")
def channels_yaml(tmp_path_factory, sim_dir, served_run):
    """A channels YAML over the session's tiny DSSM run (it has an index already, so building
    only reads it) + lexical + popularity channels, built."""
    from twotower.channels.service import build_channels

    root = tmp_path_factory.mktemp("channel_inspector")
    spec = {"name": "sim", "output": "built", "merge": {"n": 12, "fetch_k": 12, "calibration": "rrf"},
            "channels": [
                {"name": "dssm", "kind": "run", "run": str(served_run)},
                {"name": "lex", "kind": "bm25", "items": str(sim_dir / "ads.parquet"),
                 "item": "ad_id", "text": ["ad_title", "ad_category"]},
                {"name": "pop", "kind": "popularity", "log": str(sim_dir / "impressions.parquet"),
                 "item": "ad_id", "label": "click"}]}
    path = root / "channels.yaml"
    path.write_text(yaml.safe_dump(spec))
    build_channels(path, log=lambda *_: None)
    return path


@pytest.fixture(scope="module")
def served(channels_yaml):
    """The real CLI serving the channels YAML with the inspector, on a loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "twotower", "serve", "--channels",
                             str(channels_yaml), "--inspector", "--port", str(port)],
                            env={**os.environ, "TWOTOWER_API_KEY": KEY},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"twotower serve --channels exited: {proc.stderr.read()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("twotower serve --channels did not start in 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def breakdown_text(found: dict) -> str:
    """How the page writes one item's breakdown: channels by their rank there, 1 = best."""
    return ", ".join(f"{name} #{v['rank'] + 1}" for name, v in sorted(found.items(),
                                                                      key=lambda kv: kv[1]["rank"]))


def test_inspector_channel_column_shows_the_channels_that_found_each_item(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    live = httpx.post(served + "/retrieve", json={"queries": [QUERY], "k": 10}).json()
    res = live["results"][0]
    assert live["failed_channels"] == {} and len(res["ids"]) == 10
    found_by = {c for item in res["channels"] for c in item}
    assert {"dssm", "lex"} <= found_by  # the query reaches more than one channel
    driver = chromium_driver(tmp_path / "profile")
    try:
        driver.set_window_size(1100, 800)
        driver.get(served + "/inspector")
        wait = WebDriverWait(driver, 30)
        driver.find_element(By.ID, "apiKey").send_keys(KEY)
        driver.find_element(By.ID, "go").click()  # loads the fields with the key
        wait.until(ec.presence_of_element_located((By.ID, "field-query_text"))).send_keys(QUERY["query_text"])
        # the form knows the kinds the channels read: the run's user id, the lexical text field
        assert driver.find_element(By.ID, "field-query_text").get_attribute("data-kind") == "text"
        driver.find_element(By.ID, "field-user_id").send_keys(str(QUERY["user_id"]))
        driver.find_element(By.ID, "go").click()
        # (the first click, with the empty form, also rendered an answer: wait for this query's)
        cells = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent)"
        wait.until(lambda d: d.execute_script(cells, "div.col td.id") == [str(i) for i in res["ids"]])
        heads = driver.execute_script(cells, "div.col th")
        assert heads[-1] == "channel"
        shown = driver.execute_script(cells, "div.col td.channel")
        assert shown == [breakdown_text(found) for found in res["channels"]]
        named = {part.split(" #")[0] for cell in shown for part in cell.split(", ")}
        assert named == found_by and named <= {"dssm", "lex", "pop"}
        title = driver.find_element(By.CSS_SELECTOR, "div.col h2").text
        assert title.startswith(f"{live['index_version']} — channels")  # the weights version
        save_screenshot(driver, tmp_path / "inspector_channels.png")
        assert (tmp_path / "inspector_channels.png").stat().st_size > 10_000
    finally:
        driver.quit()

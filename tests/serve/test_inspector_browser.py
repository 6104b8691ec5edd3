"""The retrieval inspector in a real headless chromium: type a user id and a query, compare two
index versions, see the results render (screenshot in the test's tmp dir)."""
import httpx
import pytest

from browser import LoopbackServer, chromium_driver, save_screenshot
from twotower.index.run_index import build_run_index
from twotower.pipeline import train_run
from twotower.presets import simulator_config
from twotower.serve.app import create_app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sim_dir):
    from conftest import tiny_sections

    root = tmp_path_factory.mktemp("inspector")
    train_run(simulator_config(sim_dir, root / "run", **tiny_sections(epochs=1)), overwrite=True)
    build_run_index(root / "run", "flat")
    build_run_index(root / "run", "hnsw", {"M": 8}, weight_column="bid")  # BRW folded in
    return root / "run"


def test_inspector_in_headless_chromium(run_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = chromium_driver(tmp_path / "profile")
    try:
        with LoopbackServer(create_app(run_dir, api_key="s3cret", inspector=True)) as srv:
            driver.get(srv.url + "/inspector")
            wait = WebDriverWait(driver, 30)
            # without the key the page loads but shows no data
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "401"))
            driver.find_element(By.ID, "apiKey").send_keys("s3cret")
            driver.find_element(By.ID, "go").click()  # loads the fields with the key
            user = wait.until(ec.presence_of_element_located((By.ID, "field-user_id")))
            user.send_keys("7")
            driver.find_element(By.ID, "field-query_text").send_keys("running shoes")
            k = driver.find_element(By.ID, "k")
            k.clear()
            k.send_keys("8")
            Select(driver.find_element(By.ID, "versionB")).select_by_value("v000001")
            driver.find_element(By.ID, "go").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "div.col")) == 2
                       and all(len(c.find_elements(By.CSS_SELECTOR, "tr")) == 9
                               for c in d.find_elements(By.CSS_SELECTOR, "div.col")))
            cols = driver.find_elements(By.CSS_SELECTOR, "div.col")
            assert [c.get_attribute("data-version") for c in cols] == ["v000002", "v000001"]
            shown = [td.text for td in cols[0].find_elements(By.CSS_SELECTOR, "td.id")]
            live = httpx.post(srv.url + "/retrieve", json={"queries": [{"user_id": 7, "query_text":
                                                                       "running shoes"}], "k": 8})
            assert shown == [str(x) for x in live.json()["results"][0]["ids"]]
            heads = [th.text for th in cols[0].find_elements(By.CSS_SELECTOR, "th")]
            assert heads[:6] == ["rank", "item id", "score", "weight", "cosine", "vector"]
            assert "also in the other version" in cols[0].text and "business weight: bid" in cols[0].text
            weights = [tr.find_elements(By.TAG_NAME, "td")[3].text
                       for tr in cols[0].find_elements(By.CSS_SELECTOR, "tr")[1:]]
            assert all(float(w) > 0 for w in weights)  # v000002 folds the bid in: shown per item
            save_screenshot(driver, tmp_path / "inspector.png")
            assert (tmp_path / "inspector.png").stat().st_size > 10_000
    finally:
        driver.quit()

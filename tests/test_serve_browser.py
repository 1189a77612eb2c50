"""``spar-fast serve`` driven in a real headless Chromium (selenium + the system chromedriver):
upload an image, type classes, press Segment, read the legend and the timing, download the label
map. Skips, with the reason, where selenium, Chromium or chromedriver is missing (``.ci/run``
installs them: ``apt-get install chromium chromium-driver``, selenium in the ``test`` extra)."""
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from serve_helpers import CLASSES, expected_labels, photo, running_server, write_examples

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow  # a browser start and several segmentations: ~25 s on 2 CPU cores
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SEGMENT_TIMEOUT = 300  # seconds: the first request builds the model and encodes the class names


def _browser_paths():
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None)
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary, driver_path = _browser_paths()
    if binary is None or driver_path is None:
        pytest.skip(f"no headless browser: chromium {'found' if binary else 'missing'}, chromedriver "
                    f"{'found' if driver_path else 'missing'} (apt-get install chromium chromium-driver)")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium does not start here: {str(exc).splitlines()[0]}")
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    write_examples(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPAR_FAST_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        with running_server(examples=str(folder)) as srv:
            yield srv


def _open(browser, server):
    browser.get(server.url)
    WebDriverWait(browser, 30).until(lambda d: Select(d.find_element(By.ID, "weights")).options)


def _segment_and_wait(browser):
    browser.find_element(By.ID, "segment").click()
    WebDriverWait(browser, SEGMENT_TIMEOUT).until(
        lambda d: d.find_element(By.ID, "segment").is_enabled()
        and d.find_element(By.ID, "status").text and "segmenting" not in d.find_element(By.ID, "status").text)
    return browser.find_element(By.ID, "status")


def test_upload_segment_read_download(browser, server, tmp_path):
    image = photo(11, (45, 70))
    path = tmp_path / "street.png"
    Image.fromarray(image).save(path)
    _open(browser, server)
    browser.find_element(By.ID, "image").send_keys(str(path))
    browser.find_element(By.ID, "classes").send_keys("\n".join(CLASSES))
    Select(browser.find_element(By.ID, "mode")).select_by_value("slide")
    stride = browser.find_element(By.ID, "stride")
    stride.clear()
    stride.send_keys("32")
    browser.find_element(By.ID, "resize").click()  # keep the size: a small, fast model input
    status = _segment_and_wait(browser)
    assert status.text == "done: street.png, 45x70 pixels", status.text

    want = expected_labels(image, mode="slide", stride=32)
    items = browser.find_elements(By.CSS_SELECTOR, "#legend li")
    counts = np.bincount(want.reshape(-1), minlength=len(CLASSES))
    assert [int(li.get_attribute("data-index")) for li in items] == [
        k for k in np.argsort(-counts, kind="stable").tolist() if counts[k]]
    assert [li.find_element(By.CLASS_NAME, "name").text for li in items] == [
        CLASSES[int(li.get_attribute("data-index"))].split(",")[0] for li in items]
    timing = browser.find_element(By.ID, "timing").text
    assert timing.startswith("segmentation ") and " s on cpu (sliding window, stride 32" in timing, timing
    assert "model input 45x70" in timing
    overlay = browser.find_element(By.ID, "overlay")
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) == 70

    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("download") == "street_labels.png"
    link.click()
    target = browser.downloads / "street_labels.png"
    deadline = time.monotonic() + 30
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert target.exists(), list(browser.downloads.iterdir())
    np.testing.assert_array_equal(np.array(Image.open(target)), want)


def test_example_image_and_class_file(browser, server):
    _open(browser, server)
    Select(browser.find_element(By.ID, "example-image")).select_by_value("blobs.png")
    Select(browser.find_element(By.ID, "example-classes")).select_by_value("outdoor.safetensors")
    browser.find_element(By.ID, "resize").click()
    status = _segment_and_wait(browser)
    assert status.text == "done: blobs.png, 40x56 pixels", status.text
    assert browser.find_elements(By.CSS_SELECTOR, "#legend li")


def test_bad_input_shows_one_line(browser, server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is missing")
    _open(browser, server)
    browser.find_element(By.ID, "segment").click()
    status = browser.find_element(By.ID, "status")
    assert status.text == "choose an image first" and status.get_attribute("class") == "error"
    browser.find_element(By.ID, "image").send_keys(str(bad))
    browser.find_element(By.ID, "classes").send_keys("sky; road")
    status = _segment_and_wait(browser)
    assert status.get_attribute("class") == "error"
    assert status.text.startswith("broken.png: ") and "image" in status.text, status.text

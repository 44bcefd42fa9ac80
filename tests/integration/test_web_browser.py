"""The web page end to end, in a real browser: `rhd up` started as a user would (the whole line on Apache Kafka,
supervised, the page over HTTPS), Debian's Chromium driven through its chromedriver (Selenium, no browser download):
sign in, upload a generated study by picking its files, watch its progress, read the diagnosis with an evidence
image, store a read; another hospital's clinician is refused the study; the operators' page lists the services;
SIGTERM stops everything. Screenshots of each page are written to RHD_SCREENSHOTS when it is set (docs/web/)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import missing_tool, require_broker
from rhd.local.broker import free_port
from rhd.synth.generator import SynthConfig, load_truth, synth_studies

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
OTHER_PASSWORD = "another-hospital-password"


def _browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        missing_tool("Debian's chromium and chromium-driver are not installed (`make browser` installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.add_argument("--ignore-certificate-errors")  # the stack's own CA signed the page's certificate
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_broker("kafka")
    workdir = tmp_path_factory.mktemp("up")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RHD_")}
    env["RHD_HOSPITALS"] = '["H001", "H002"]'
    log = (workdir / "up.out").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "rhd.cli", "up", "--workdir", str(workdir), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "services.json").exists() or "web page" not in (workdir / "up.out").read_text():
            assert up.poll() is None, (workdir / "up.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "rhd up not ready in 240 s"
            time.sleep(1)
        users = {
            line.split("\t")[1]: line.split("\t")
            for line in (workdir / "first-users.tsv").read_text().split("\n")
            if line
        }
        add = [sys.executable, "-m", "rhd.cli", "users", "add", "other-clinician", "--hospital", "H002"]
        add += ["--role", "clinician", "--db", str(workdir / "web.sqlite")]
        subprocess.run(add, check=True, env={**env, "RHD_NEW_USER_PASSWORD": OTHER_PASSWORD}, capture_output=True)
        yield {"workdir": workdir, "url": f"https://localhost:{port}", "users": users, "process": up}
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                raise
        log.close()


def _wait_web(driver, url: str, timeout_s: float = 90.0) -> None:
    """The page answers (the web service starts after the line, TensorFlow's import first)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            driver.get(url + "/login")
            if driver.find_elements("id", "name"):
                return
        except WebDriverException:  # not listening yet
            pass
        assert time.monotonic() < deadline, f"the page did not answer in {timeout_s:.0f} s"
        time.sleep(2)


def _sign_in(driver, url: str, name: str, password: str) -> None:
    driver.get(url + "/login")
    driver.find_element("id", "name").send_keys(name)
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("css selector", "form button[type=submit]").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(
        lambda d: "/login" not in d.current_url or d.find_elements("css selector", ".error")
    )
    assert "/login" not in driver.current_url, driver.find_element("css selector", ".error").text


def _shot(driver, name: str) -> None:
    out = os.environ.get("RHD_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / f"{name}.png"))


def test_upload_progress_diagnosis_evidence_and_refusal(stack, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    # A study with a regurgitant jet, so there is a colour jet to show as evidence.
    studies = synth_studies(
        7, 3, tmp_path / "studies", SynthConfig(videos_per_study=10, duration_s=(1.0, 1.5)), balanced=True
    )
    study = next(d for d in studies if load_truth(d)["label"] == "definite")
    files = sorted(str(p) for p in study.iterdir() if p.is_file())

    url, users = stack["url"], stack["users"]
    driver = _browser()
    try:
        _wait_web(driver, url)
        _shot(driver, "login")
        _sign_in(driver, url, users["clinician"][0], users["clinician"][2])
        assert "Studies of H001" in driver.page_source

        driver.get(url + "/upload")
        _shot(driver, "upload")
        driver.find_element("id", "files").send_keys("\n".join(files))
        driver.find_element("css selector", "#upload button[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: d.current_url.endswith(f"/studies/{study.name}"))
        assert driver.find_element("id", "progress-h").text == "Progress"
        _shot(driver, "progress")

        # The page updates itself; once diagnosed it shows the suggestion.
        WebDriverWait(driver, 240, poll_frequency=1).until(lambda d: d.find_elements("id", "suggested-label"))
        accounted = int(driver.find_element("id", "accounted").text)
        expected = int(driver.find_element("id", "expected").text)
        assert accounted == expected > 0
        label = driver.find_element("id", "suggested-label").text
        assert label in ("normal", "borderline", "definite", "referred")
        assert "WHF 2012 criteria" in driver.page_source
        assert "not a diagnosis" in driver.find_element("css selector", ".intended").text

        # Every evidence image the page shows loads (drawn from the frame store; a jet or the valve outlined).
        images = driver.find_elements("css selector", "img.evidence")
        assert images, "no evidence frame shown"
        driver.execute_script("document.querySelectorAll('img.evidence').forEach(i => i.loading = 'eager')")
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('img.evidence')].every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        _shot(driver, "diagnosis")

        # The cardiologist overrides (or confirms) the suggestion; the read is stored beside it.
        final = "definite" if label != "definite" else "borderline"
        driver.find_element("css selector", f"#final_label option[value='{final}']").click()
        driver.find_element("id", "note").send_keys("read on the PLAX clip")
        driver.find_element("css selector", "#reads form button[type=submit]").click()
        WebDriverWait(driver, 20).until(lambda d: d.find_elements("css selector", "p.read"))
        read = driver.find_element("css selector", "p.read").text
        assert final in read and "overrode" in read

        driver.get(url + "/studies?label=" + label)
        assert study.name in driver.page_source
        _shot(driver, "studies")

        # Another hospital's clinician cannot see it, nor its evidence, nor find it in the list.
        driver.find_element("css selector", "header form button").click()
        _sign_in(driver, url, "other-clinician", OTHER_PASSWORD)
        assert "Studies of H002" in driver.page_source
        assert study.name not in driver.page_source
        driver.get(f"{url}/studies/{study.name}")
        assert "no such study for your hospital" in driver.page_source
        driver.get(f"{url}/studies/{study.name}/progress.json")
        assert "no such study" in driver.page_source

        # The operator sees every service running, and the models with their report of record.
        driver.delete_all_cookies()
        _sign_in(driver, url, users["operator"][0], users["operator"][2])
        assert driver.current_url.endswith("/operators")
        states = driver.find_elements("css selector", "td.state")
        assert len(states) >= 12 and all(s.text == "running" for s in states)
        assert "valve" in driver.page_source and "Dead letters" in driver.page_source
        _shot(driver, "operators")
        # The study entered the drift figures under its hospital (and the device its upload named).
        driver.get(url + "/drift")
        rows = driver.find_elements("css selector", "tbody tr")
        assert any(r.text.startswith("H001") for r in rows), driver.page_source[-800:]
        _shot(driver, "drift")

        # The researcher sees each model's versions, which one serves, and the build form.
        driver.delete_all_cookies()
        _sign_in(driver, url, users["researcher"][0], users["researcher"][2])
        driver.get(url + "/models")
        assert driver.find_element("id", "m-study").text == "study" and "serving" in driver.page_source
        assert driver.find_element("id", "builds-h").text == "Build a study model"
        _shot(driver, "models")
    finally:
        driver.quit()


def test_ps_then_sigterm_stops_everything(stack):
    ps = subprocess.run(
        [sys.executable, "-m", "rhd.cli", "ps", "--workdir", str(stack["workdir"])], capture_output=True, text=True
    )
    assert "deid" in ps.stdout and "web" in ps.stdout and "running" in ps.stdout
    rows = json.loads((stack["workdir"] / "services.json").read_text())
    pids = [r["pid"] for r in rows if r.get("pid")]
    assert len(pids) >= 12
    up = stack["process"]
    up.send_signal(signal.SIGTERM)
    up.wait(120)
    assert up.returncode == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not (stack["workdir"] / "services.json").exists()

"""The app in a real browser: headless Chromium (the system's /usr/bin/chromium) driven by
Playwright uploads a feature file, then records from a fake microphone that plays a held-out
clip. Screenshots go to test-artifacts/screenshots/."""

from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import ROOT

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="Python Playwright is not installed (see requirements-dev.txt)")

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
SPOKEN = ROOT / "examples" / "asterisk-allison_en-US_followme-status.flac"  # held out from training
FEATURES = ROOT / "examples" / "asterisk-allison_es-MX_spy-h323.pt"
ANSWER_SECONDS = 90  # generous: CI machines may be busy


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; never `playwright install`)")
    # Chromium's fake microphone plays a WAV file, over and over.
    wav = tmp_path_factory.mktemp("microphone") / "allison.wav"
    wave, rate = sf.read(SPOKEN, dtype="int16")
    sf.write(wav, wave, rate, subtype="PCM_16")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=FLAGS + [f"--use-file-for-fake-audio-capture={wav}"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_server):
    url, _ = app_server
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.goto(url)
    sync_api.expect(page.get_by_role("button", name="Identify", exact=True)).to_be_visible(timeout=60_000)
    yield page
    context.close()


def test_feature_file_upload_shows_the_top_k(page):
    page.locator("#feature-file input[type=file]").set_input_files(str(FEATURES))
    top = page.locator("#top-speakers h2")
    sync_api.expect(top).to_have_text("asterisk/allison", timeout=ANSWER_SECONDS * 1000)
    sync_api.expect(page.locator("#top-speakers .confidence-set")).to_have_count(5 + 1)  # and "unknown speaker"
    sync_api.expect(page.locator("#verdict")).to_contain_text("threshold")
    plots = page.locator("img[src^='data:image/png']")
    sync_api.expect(plots).to_have_count(2)
    page.screenshot(path=SCREENSHOTS / "identify-feature-file.png", full_page=True)
    assert float(page.locator("#top-speakers .confidence-set .confidence").first.inner_text().rstrip("%")) > 50


def test_microphone_recording_is_identified(page):
    audio = page.locator("#identify-audio")
    audio.get_by_role("button", name="Record audio").click()
    audio.get_by_role("button", name="Record", exact=True).click()
    page.wait_for_timeout(6000)  # six seconds of the clip, looping
    page.screenshot(path=SCREENSHOTS / "identify-microphone-recording.png", full_page=True)
    audio.locator("button.stop-button").first.click()
    top = page.locator("#top-speakers h2")
    sync_api.expect(top).to_have_text("asterisk/allison", timeout=ANSWER_SECONDS * 1000)
    sync_api.expect(page.locator("#verdict")).to_contain_text("s of speech")
    page.screenshot(path=SCREENSHOTS / "identify-microphone.png", full_page=True)
    seconds = float(page.locator("#verdict").inner_text().split("Analysed ")[1].split(" s of speech")[0])
    assert seconds >= 3  # the recording reached the model, not a fragment of it

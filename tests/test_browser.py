"""The app in a real browser: headless Chromium (the system's /usr/bin/chromium) driven by
Playwright uploads a feature file, then records from a fake microphone that plays a held-out
clip. Screenshots go to test-artifacts/screenshots/."""

import re
from pathlib import Path

import pytest
import soundfile as sf
import torch

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


def test_one_long_microphone_recording_enrolls_a_speaker(page, app_server, default_checkpoint):
    """The Enroll tab's main path: read a paragraph into the microphone for about 20 s, stop, enroll. The
    recording is cut into pieces of a few seconds (checked against each other) and enrolled as one voiceprint."""
    _, gallery = app_server
    page.get_by_role("tab", name="Enroll").click()
    sync_api.expect(page.locator("#enroll-guide")).to_contain_text("For the best chance")
    recorder = page.locator("#enroll-recording")
    recorder.get_by_role("button", name="Record", exact=True).click()
    page.wait_for_timeout(20_000)  # the fake microphone loops a held-out clip of Allison
    recorder.locator("button.stop-button").first.click()
    sync_api.expect(page.locator("#enroll-clips")).to_contain_text(".wav", timeout=60_000)  # the recording joined
    page.locator("#enroll-name input").fill("Reader")
    page.get_by_role("button", name="Enroll", exact=True).click()
    message = page.locator("#enroll-message")
    sync_api.expect(message).to_contain_text("Enrolled Reader from 1 clip", timeout=ANSWER_SECONDS * 1000)
    page.screenshot(path=SCREENSHOTS / "enroll-recording.png", full_page=True)
    seconds = float(message.inner_text().split("(")[1].split(" s of speech")[0])
    assert seconds >= 12  # most of the 20 s reached the model
    assert "cut into" in message.inner_text()  # a long recording becomes several clips
    from speaker_app.checkpoint import load_checkpoint
    from speaker_app.decisions import DEFAULT_MIN_ENROLL_SECONDS

    calibration = load_checkpoint(default_checkpoint).info.get("calibration", {})
    least = (calibration.get("enrollment") or {}).get("min_seconds", DEFAULT_MIN_ENROLL_SECONDS)
    assert ("**Advice:** only" in message.inner_html() or "Advice: only" in message.inner_text()) == (seconds < least)
    sync_api.expect(page.locator("#enrolled-table")).to_contain_text("Reader")


# -- per-visitor galleries (issue 14): one browser context cannot see or delete another's speakers --
@pytest.fixture(scope="module")
def visitors_app(tmp_path_factory):
    """A tiny untrained model served with `--galleries per-visitor`, and a feature file to enroll."""
    from tests.conftest import speechlike_features
    from tests.helpers import serving_tiny

    folder = tmp_path_factory.mktemp("visitors")
    torch.save(speechlike_features(150), folder / "voice.pt")  # enrolling needs speech, not noise
    with serving_tiny(folder, "--galleries", "per-visitor") as (_, url):
        yield url, folder / "voice.pt"


def visit_enroll_tab(browser, url):
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.goto(url)
    page.get_by_role("tab", name="Enroll").click()
    sync_api.expect(page.get_by_role("button", name="Enroll", exact=True)).to_be_visible(timeout=60_000)
    return context, page


def listed(clip):
    """The clip's name as the upload list shows it (its stem and suffix sometimes in separate elements)."""
    return re.compile(re.escape(clip.stem) + r"\s*" + re.escape(clip.suffix))


def enroll(page, name, clip):
    page.locator("#enroll-name input").fill(name)
    page.locator("#enroll-clips input[type=file]").set_input_files(str(clip))
    sync_api.expect(page.locator("#enroll-clips")).to_contain_text(listed(clip), timeout=60_000)  # uploaded
    page.get_by_role("button", name="Enroll", exact=True).click()


def test_visitors_cannot_see_or_delete_each_others_speakers(browser, visitors_app):
    url, voice = visitors_app
    first, ann = visit_enroll_tab(browser, url)
    second, bob = visit_enroll_tab(browser, url)
    try:
        enroll(ann, "Ann", voice)
        sync_api.expect(ann.locator("#enroll-message")).to_contain_text("Enrolled Ann from 1 clip", timeout=60_000)
        sync_api.expect(ann.locator("#enrolled-table")).to_contain_text("Ann")
        bob.reload()  # another visitor's page, opened after Ann was enrolled
        bob.get_by_role("tab", name="Enroll").click()
        sync_api.expect(bob.get_by_role("button", name="Delete")).to_be_visible(timeout=60_000)
        assert "Ann" not in bob.locator("#enrolled-table").inner_text()
        menu = bob.locator("#enrolled-menu input")
        menu.fill("Ann")
        menu.press("Enter")
        bob.get_by_role("button", name="Delete").click()
        sync_api.expect(bob.locator("#enroll-message")).to_have_text("Ann is not enrolled.", timeout=60_000)
        bob.screenshot(path=SCREENSHOTS / "visitors-another.png", full_page=True)
        sync_api.expect(ann.locator("#enrolled-table")).to_contain_text("Ann")  # still there for its visitor
        ann.get_by_role("button", name="Delete").click()
        sync_api.expect(ann.locator("#enroll-message")).to_have_text("Deleted Ann.", timeout=60_000)
    finally:
        first.close()
        second.close()


def test_names_show_as_plain_text_and_a_refusal_marks_only_its_message(browser, visitors_app):
    url, voice = visitors_app
    context, page = visit_enroll_tab(browser, url)
    try:
        enroll(page, "$$x^2$$", voice)
        message = page.locator("#enroll-message")
        sync_api.expect(message).to_contain_text("Enrolled $$x^2$$ from 1 clip", timeout=60_000)
        assert page.locator(".katex").count() == 0  # no formula anywhere on the page
        sync_api.expect(page.locator("#enrolled-table")).to_contain_text("$$x^2$$")
        # A successful enrollment clears the clips in a second event: once it has, the next upload stays.
        sync_api.expect(page.locator("#enroll-clips")).not_to_contain_text(listed(voice), timeout=60_000)
        again = voice.with_name("voice-again.pt")  # a new file: a file input may ignore the same file twice
        again.write_bytes(voice.read_bytes())
        enroll(page, "$$X^2$$", again)  # the same name up to case: refused, the page asks to replace
        sync_api.expect(page.get_by_text("is already enrolled")).to_be_visible(timeout=60_000)
        page.screenshot(path=SCREENSHOTS / "enroll-refused.png", full_page=True)
        for element in ("#enrolled-table", "#enrolled-menu"):
            assert page.locator(element).get_by_text("Error", exact=True).count() == 0, element
        page.locator("#enroll-replace input").check()  # the clips stay for the second try
        page.get_by_role("button", name="Enroll", exact=True).click()
        sync_api.expect(message).to_contain_text("Replaced $$X^2$$ from 1 clip", timeout=60_000)
        sync_api.expect(page.locator("#enrolled-table")).not_to_contain_text("$$x^2$$")
    finally:
        context.close()


# -- Who speaks when (issue 39) ----------------------------------------------------------------------
def test_a_conversation_uploaded_to_who_speaks_when_gives_a_timeline_of_two_rows(page, two_voices):
    path, _ = two_voices
    page.get_by_role("tab", name="Who speaks when").click()
    page.locator("#diarize-audio input[type=file]").set_input_files(str(path))
    sync_api.expect(page.locator("#diarize-audio audio, #diarize-audio .waveform-container").first).to_be_attached(
        timeout=60_000)  # uploaded
    page.get_by_role("button", name="Find who speaks when").click()
    summary = page.locator("#diarize-summary")
    sync_api.expect(summary).to_contain_text("2 speakers", timeout=ANSWER_SECONDS * 1000)
    sync_api.expect(summary.locator("li")).to_have_count(2)  # one line per timeline row
    timeline = page.locator("#diarize-timeline img[src^='data:image/png']")
    sync_api.expect(timeline).to_have_count(1)
    sync_api.expect(page.locator("#diarize-files")).to_contain_text(listed(path.with_suffix(".rttm")))
    speakers = [line.split(":")[0].strip() for line in summary.locator("li").all_inner_texts()]
    assert len(set(speakers)) == 2
    for speaker in speakers:  # the segment table names both
        sync_api.expect(page.locator("#diarize-table")).to_contain_text(speaker)
    timeline.screenshot(path=SCREENSHOTS / "diarize-timeline.png")
    page.screenshot(path=SCREENSHOTS / "diarize.png", full_page=True)

"""The app as a server: `python app.py` in a subprocess, driven over HTTP with gradio_client."""

import json

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tests import helpers
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
ALLISON = EXAMPLES / "asterisk-allison_en-US_followme-status.flac"
JUNE = EXAMPLES / "asterisk-june_fr-CA_vm-whichbox.flac"
MENARDI = EXAMPLES / "asterisk-menardi_it-IT_confbridge-pin-bad.flac"
FEATURES = EXAMPLES / "asterisk-allison_es-MX_spy-h323.pt"


@pytest.fixture(scope="module")
def client(app_server, tmp_path_factory):
    url, _ = app_server
    return helpers.client(url, tmp_path_factory.mktemp("downloads"))


def identify(client, audio=None, features=None, top_k=3):
    label, verdict = client.predict(handle_file(str(audio)) if audio else None,
                                    handle_file(str(features)) if features else None, top_k, api_name="/identify")
    return [c["label"] for c in label["confidences"]], verdict


def test_identify_audio_and_feature_file(client):
    names, verdict = identify(client, audio=ALLISON)
    assert names[0] == "asterisk/allison" and len(names) == 3 + 1 and "unknown speaker" in names
    assert "threshold" in verdict
    names, _ = identify(client, features=FEATURES, top_k=5)
    assert names[0] == "asterisk/allison" and len(names) == 5 + 1


def test_bad_input_is_an_error_message_and_the_app_keeps_serving(client, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AppError, match="is empty"):
        identify(client, audio=empty)
    names, _ = identify(client, features=FEATURES)
    assert names[0] == "asterisk/allison"


def test_enroll_then_identify_then_forget(client, app_server):
    _, gallery = app_server
    message, table, menu = client.predict("Visitor", [handle_file(str(JUNE))], api_name="/enroll")
    assert "Enrolled **Visitor** from 1 clip" in message
    assert [row[0] for row in table["data"]] == ["Visitor"]
    stored = json.loads(next(gallery.glob("*.json")).read_text())  # on disk, beside the model's fingerprint
    assert list(stored["speakers"]) == ["Visitor"]
    names, verdict = identify(client, audio=JUNE)
    assert names[0] == "Visitor (enrolled)" and "### Visitor" in verdict
    message, table, _ = client.predict("Visitor", api_name="/forget")
    assert message == "Deleted **Visitor**." and table["data"] == []
    names, _ = identify(client, audio=JUNE)
    assert "Visitor (enrolled)" not in names


def test_verify(client):
    verdict, score = client.predict(handle_file(str(MENARDI)), handle_file(str(MENARDI)), api_name="/verify")
    assert verdict.startswith("### Same speaker") and f"{score:.3f}" in verdict
    assert "cosine 1.000" in verdict or score == pytest.approx(1.0, abs=1e-3)  # AS-norm reports the cosine beside it
    same_clip = score
    verdict, score = client.predict(handle_file(str(ALLISON)), handle_file(str(MENARDI)), api_name="/verify")
    assert score < same_clip and f"{score:.3f}" in verdict

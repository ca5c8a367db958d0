"""Who speaks when (issue 39): RTTM, labelling, clustering, speech activity, bad input, and a two-speaker
conversation made at test time from ../shared/speech, diarized by the default model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from speaker_app.clustering import Count, absorb_small, agglomerative, centred, resegment, spectral
from speaker_app.diarize import (DiarizationSettings, InputError, check_length, length_notes, one_ahead,
                                 stored_settings, window_frames)
from speaker_app.segments import Segment, csv_text, join_pieces, label_speech, read_rttm, rttm_lines, write_rttm
from speaker_app.speech_activity import ActivitySettings, energy_regions, silero_regions
from tests.conftest import speechlike

SEGMENTS = [Segment(0.5, 2.25, "Ann", 0.91), Segment(2.5, 4.0, "unknown 1"), Segment(3.5, 5.0, "Ann", 0.91)]


# -- RTTM and CSV --------------------------------------------------------------------------------
def test_rttm_lines_are_well_formed_and_read_back(tmp_path):
    path = write_rttm(SEGMENTS, "my talk", tmp_path / "talk.rttm")
    lines = path.read_text().splitlines()
    assert lines[0] == "SPEAKER my_talk 1 0.500 1.750 <NA> <NA> Ann <NA> <NA>"
    for line in lines:
        fields = line.split(" ")
        assert len(fields) == 10 and fields[0] == "SPEAKER" and fields[2] == "1"
        assert fields[5] == fields[6] == fields[8] == fields[9] == "<NA>"
        assert float(fields[3]) >= 0 and float(fields[4]) > 0
    back = read_rttm(path)["my_talk"]
    assert [(s.start, s.end, s.speaker) for s in back] == [(0.5, 2.25, "Ann"), (2.5, 4.0, "unknown_1"), (3.5, 5.0, "Ann")]


@pytest.mark.parametrize("line", ["SPEAKER x 1 abc 1.0 <NA> <NA> a <NA> <NA>", "SPEAKER x 1 -1 1.0 <NA> <NA> a",
                                  "SPEAKER x 1 0.0"])
def test_bad_rttm_lines_are_named(line):
    with pytest.raises(ValueError, match="line 2"):
        read_rttm("SPEAKER x 1 0.0 1.0 <NA> <NA> a <NA> <NA>\n" + line)


def test_rttm_refuses_a_segment_without_a_speaker():
    with pytest.raises(ValueError, match="speaker name"):
        rttm_lines([Segment(0.0, 1.0, " ")], "x")


def test_csv_has_a_header_and_empty_scores_for_none():
    assert csv_text(SEGMENTS[:2]).splitlines() == ["start,end,speaker,score", "0.500,2.250,Ann,0.910",
                                                   "2.500,4.000,unknown 1,"]


# -- labelling speech from windows -----------------------------------------------------------------
def test_each_moment_takes_the_nearest_windows_label():
    regions = [(0.0, 3.0), (3.2, 3.4), (5.0, 6.0)]
    windows = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (5.0, 6.0)]
    pieces = label_speech(regions, windows, [0, 0, 1, 1])
    # The 1-2 s window's share ends halfway to the next centre (2.0 s); the short region (3.2-3.4 s) has no
    # window of its own and is nearest to the 2-3 s one (centre 2.5 s against 5.5 s).
    assert pieces == [(0.0, 2.0, 0), (2.0, 3.0, 1), (3.2, 3.4, 1), (5.0, 6.0, 1)]
    covered = sum(end - start for start, end, _ in pieces)
    assert covered == pytest.approx(sum(end - start for start, end in regions))


def test_labelling_checks_its_inputs_and_joins_pieces():
    with pytest.raises(ValueError, match="2 windows but 1 labels"):
        label_speech([(0, 1)], [(0, 1), (1, 2)], [0])
    assert label_speech([(0, 1)], [], []) == []
    assert join_pieces([(0, 1, 0), (1.2, 2, 0), (2, 3, 1)], gap=0.25) == [(0, 2, 0), (2, 3, 1)]
    assert join_pieces([(0, 1, 0), (1.5, 2, 0)], gap=0.25) == [(0, 1, 0), (1.5, 2, 0)]


@pytest.mark.parametrize("frames, expected", [(50, []), (80, [(0, 80)]), (120, [(0, 120)]),
                                              (200, [(0, 120), (60, 180), (80, 200)])])
def test_window_frames(frames, expected):
    assert window_frames(frames, window=120, hop=60, shortest=60) == expected


# -- clustering ------------------------------------------------------------------------------------
def voices(turns: list[int], seed: int = 0, spread: float = 0.35) -> np.ndarray:
    """(N, 32) unit embeddings in time order, one per entry of `turns` (the speaker of that window)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(turns) + 1, 32))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[turns] + spread * rng.standard_normal((len(turns), 32)) / np.sqrt(32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


TURNS = [0] * 12 + [1] * 10 + [2] * 8 + [0] * 9 + [1] * 11


@pytest.mark.parametrize("method", ["agglomerative", "spectral"])
def test_clustering_finds_three_speakers(method):
    x = voices(TURNS)
    labels = agglomerative(x, 0.6) if method == "agglomerative" else spectral(x, Count(low=2, high=8))
    assert labels.tolist() == TURNS  # numbered by first appearance


def test_a_known_count_and_bounds_are_kept():
    x = voices(TURNS)
    assert agglomerative(x, 0.6, Count(exact=2)).max() + 1 == 2
    assert agglomerative(x, 1.9, Count(low=3)).max() + 1 == 3  # one cluster at this threshold; at least 3 asked
    assert agglomerative(x, 0.01, Count(high=4)).max() + 1 == 4
    assert agglomerative(x[:1], 0.6).tolist() == [0]
    with pytest.raises(ValueError, match="min <= max"):
        agglomerative(x, 0.6, Count(low=3, high=2))


def test_resegmentation_fixes_a_stray_window_and_small_clusters_are_absorbed():
    x = voices(TURNS)
    noisy = np.array(TURNS)
    noisy[5] = 1  # one window of speaker 0 given to speaker 1
    assert resegment(x, noisy, switch_penalty=0.3).tolist() == TURNS
    labels = np.array(TURNS[:30] + [3] + TURNS[31:])  # a fourth "speaker" of one window
    seconds = np.full(len(labels), 0.75)
    folded = absorb_small(x, labels, seconds, min_seconds=2.0)
    assert folded.max() + 1 == 3 and folded[30] == TURNS[30]


def test_taking_away_the_recordings_mean_separates_voices_that_share_a_channel():
    x = voices(TURNS)
    channel = np.random.default_rng(7).standard_normal(32)
    shared = x + 2.0 * channel / np.linalg.norm(channel)  # one strong component in every window: the room, the noise
    shared /= np.linalg.norm(shared, axis=1, keepdims=True)
    assert agglomerative(shared, 0.6).max() == 0  # every voice merged into one
    assert agglomerative(centred(shared, 1.0), 0.6).tolist() == TURNS
    assert np.allclose(centred(x, 0.0), x) and np.allclose(np.linalg.norm(centred(x, 0.5), axis=1), 1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        centred(x, 1.5)
    with pytest.raises(ValueError, match="centre"):
        DiarizationSettings(centre=-0.1)


# -- speech activity ---------------------------------------------------------------------------------
def test_energy_regions_find_the_loud_parts():
    gap = np.zeros(8000, np.float32)
    wave = np.concatenate([gap, speechlike(1.0), gap, gap, speechlike(0.5, seed=1), gap])
    regions = energy_regions(wave, ActivitySettings(pad=0.0))
    assert len(regions) == 2
    assert regions[0] == pytest.approx((0.5, 1.5), abs=0.03) and regions[1] == pytest.approx((2.5, 3.0), abs=0.03)
    assert energy_regions(np.zeros(16000, np.float32)) == []


def test_silero_finds_no_speech_in_silence_or_a_tone_and_leaves_torch_threads_alone():
    threads = torch.get_num_threads()
    t = np.arange(32000) / 16000
    assert silero_regions(np.zeros(32000, np.float32)) == []
    assert silero_regions((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)) == []
    assert torch.get_num_threads() == threads  # importing silero_vad sets 1 thread for the whole process


def test_settings_refuse_nonsense_and_fall_back(tmp_path):
    with pytest.raises(ValueError, match="hop"):
        DiarizationSettings(window=1.0, hop=2.0)
    with pytest.raises(ValueError, match="method"):
        DiarizationSettings(method="kmeans")
    with pytest.raises(ValueError, match="detector"):
        ActivitySettings(detector="webrtc")
    assert stored_settings("0" * 16, tmp_path / "none.json") == (DiarizationSettings(), "uncalibrated defaults")


# -- length ------------------------------------------------------------------------------------------
def test_lengths_get_clear_answers():
    with pytest.raises(InputError, match="too short to tell voices apart: 0.50 s"):
        check_length(0.5)
    check_length(1.0)
    two_hours = length_notes(7200.0, 1800.0)
    assert two_hours == ["the recording lasts 2:00:00.0; only its first 30:00.0 were diarized (the command line, "
                         "`python -m speaker_app.diarize`, takes any length)"]
    assert length_notes(7200.0, None) == []  # the command line reads any length block by block


def test_duration_comes_from_the_header_without_decoding(tmp_path):
    from speaker_app.diarize import file_seconds

    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(8000, np.float32), 8000)
    assert file_seconds(path) == 1.0
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(InputError, match="cannot decode bad.wav"):
        file_seconds(tmp_path / "bad.wav")


# -- end to end: a conversation made now from ../shared/speech, the default model ------------------------
@pytest.fixture(scope="module")
def recognizer(default_checkpoint):
    from speaker_app.recognizer import Recognizer

    return Recognizer.from_checkpoint(default_checkpoint)


def der(reference: list[Segment], hypothesis: list[Segment], seconds: float) -> float:
    """pyannote.metrics' diarization error rate, overlap scored, a ±0.25 s collar (pyannote's collar=0.5)."""
    metrics = pytest.importorskip("pyannote.metrics.diarization", reason="pip install -r requirements-dev.txt")
    from pyannote.core import Annotation, Segment as Span, Timeline

    def annotation(segments):
        out = Annotation()
        for i, s in enumerate(segments):
            out[Span(s.start, s.end), i] = s.speaker
        return out

    return metrics.DiarizationErrorRate(collar=0.5)(annotation(reference), annotation(hypothesis),
                                                   uem=Timeline([Span(0, seconds)]))


@pytest.mark.slow
def test_a_two_speaker_conversation_is_diarized_by_the_command_line(two_voices, default_checkpoint, tmp_path,
                                                                    capsys):
    from speaker_app.diarize import main

    path, reference = two_voices
    assert main([str(path), "--rttm-dir", str(tmp_path), "--checkpoint", str(default_checkpoint)]) == 0
    rttm = tmp_path / "two voices.rttm"
    for line in rttm.read_text().splitlines():  # well-formed: ten fields, the file's stem as one field
        fields = line.split(" ")
        assert len(fields) == 10 and fields[:3] == ["SPEAKER", "two_voices", "1"] and float(fields[4]) > 0
    found = read_rttm(rttm)["two_voices"]
    assert len({s.speaker for s in found}) == 2
    error = der(reference, found, sf.info(str(path)).duration)
    assert error < 0.15, f"DER {error:.1%}"
    printed = capsys.readouterr().out
    assert "2 speaker(s)" in printed and "start" in printed.splitlines()[-len(found) - 1]


@pytest.mark.slow
def test_one_voice_is_one_speaker_and_silence_is_refused(speech_dir, recognizer, tmp_path):
    from speaker_app.diarize import diarize_file, diarize_wave

    clips = sorted((speech_dir / "vcc2016/TF1").glob("*.flac"))[:6]
    wave = np.concatenate([np.concatenate([sf.read(c, dtype="float32")[0], np.zeros(8000, np.float32)]) for c in clips])
    result = diarize_wave(wave, 16000, recognizer)
    assert [s.name for s in result.speakers] == ["vcc2016/TF1"]  # one of the model's own speakers, named
    with pytest.raises(InputError, match="no speech found"):
        diarize_wave(np.zeros(48000, np.float32), 16000, recognizer)
    sf.write(tmp_path / "short.wav", wave[:8000], 16000)
    with pytest.raises(InputError, match="too short to tell voices apart: 0.50 s"):
        diarize_file(tmp_path / "short.wav", recognizer)


@pytest.mark.slow
def test_a_long_file_is_cut_where_asked_and_progress_is_reported(two_voices, recognizer):
    from speaker_app.diarize import diarize_file

    path, _ = two_voices
    reported = []
    result = diarize_file(path, recognizer, max_seconds=20.0, progress=lambda done, total: reported.append((done, total)))
    assert result.duration == pytest.approx(20.0, abs=0.1)
    assert result.notes[0].startswith("the recording lasts 0:") and "only its first 0:20.0 were diarized" in result.notes[0]
    assert reported[-1] == (pytest.approx(20.0, abs=0.1), 20.0)
    assert max(s.end for s in result.segments) <= 20.0 + 1e-6


@pytest.mark.slow
def test_a_known_count_is_kept_and_the_same_name_joins_clusters(two_voices, recognizer):
    from speaker_app.diarize import diarize_file

    path, _ = two_voices
    result = diarize_file(path, recognizer, count=Count(exact=3), keep_clips=True)
    names = [s.name for s in result.speakers]
    assert len(names) == len(set(names)) <= 3  # clusters named as one known voice are one speaker
    assert all(1 <= len(s.clips) <= 5 and all(c.shape[1] == 40 for c in s.clips) for s in result.speakers)


def test_one_ahead_makes_the_next_item_in_a_thread_while_this_one_is_used():
    made = []

    def items():
        for i in range(3):
            made.append((i, threading.current_thread().name))
            yield i
        raise ValueError("broken block")

    seen = []
    with pytest.raises(ValueError, match="broken block"):
        for item in one_ahead(items()):
            time.sleep(0.05)
            seen.append((item, len(made)))
    assert [item for item, _ in seen] == [0, 1, 2]
    assert seen[0][1] == 2  # item 1 was made while item 0 was in use
    assert all(name.startswith("one-ahead") for _, name in made)

"""Who speaks when (issue 39): RTTM, labelling, clustering, speech activity, bad input, and a two-speaker
conversation made at test time from ../shared/speech, diarized by the default model."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from speaker_app.clustering import Count, absorb_small, agglomerative, resegment, spectral
from speaker_app.diarize import (DiarizationSettings, InputError, check_length, length_notes, stored_settings,
                                 window_frames)
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

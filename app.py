"""The Gradio demo: who is speaking? Identify, enroll and verify speakers.

    python app.py [--checkpoint PATH] [--gallery DIR] [--galleries shared|per-visitor]

The checkpoint comes from --checkpoint, else $SPEAKER_CHECKPOINT, else
checkpoints/default.pt. Enrolled speakers live in a shared gallery folder
(--gallery, else $SPEAKER_GALLERY, else ./gallery), one JSON file per model, or,
with `--galleries per-visitor` (the default on Hugging Face Spaces, where
$SPACE_ID is set), in each visitor's session only. It serves on 127.0.0.1
unless $GRADIO_SERVER_NAME says otherwise ($GRADIO_SERVER_PORT for the port).
`gradio app.py` and tests import `demo`; the handlers only translate between
Gradio values and `speaker_app.recognizer.Recognizer`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr
import torch
from gradio.components.plot import PlotData

from speaker_app import describe, diarize, heap, plots
from speaker_app.checkpoint import CheckpointError, load_checkpoint
from speaker_app.clustering import Count
from speaker_app.segments import csv_text, write_rttm
from speaker_app.gallery import Gallery
from speaker_app.recognizer import MAX_BATCH, Explanation, InputError, Recognizer, fingerprint

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default.pt"
EXAMPLES = ROOT / "examples"
MAX_UPLOAD = "50mb"  # larger uploads are refused by the server; 10 min of 16-bit 44.1 kHz stereo is ~100 MB
DEFAULT_TOP_K = 5
# Model requests run in up to MAX_BATCH threads per queue (identify; enroll and verify): each decodes its
# audio, then waits for the model, which runs whatever waits as one batch (speaker_app.batching).
IDENTIFY, MODEL, PLOTS = "identify", "model", "plots"
# Gradio's upload cache: every 5 minutes, files older than 15 minutes are deleted. Enrollment clips are
# deleted once embedded (Handlers._delete_uploads); this removes the rest (clips to identify or verify,
# uploads never submitted, refused enrollments).
DELETE_CACHE = (300, 900)
HEAP_TRIM_SECONDS = 1.0  # freed memory goes back to the system this often (speaker_app.heap)
# Gradio keeps every session until this many newer ones exist (~0.1 MB of its own each, plus the visitor's
# explanation for 15 minutes, at most 0.6 MB, and a per-visitor gallery): memory stays bounded for a Space.
SESSIONS = 2000
# The "Who speaks when" tab diarizes at most this much of a recording (the command line, any length): at the
# pipeline's speed on a Space's 2 vCPUs (bench/RESULTS.md) half an hour takes about a minute.
MAX_DIARIZE_SECONDS = 1800.0
PLAIN = dict(latex_delimiters=[])  # Markdown that shows names: `$$x^2$$` is a name, not a formula
# Gradio's upload cache for `python app.py`, unless $GRADIO_TEMP_DIR says otherwise: a folder relative
# to the working folder, so that upload replies and the page's config name no absolute server path.
UPLOADS = "gradio-uploads"
# Browsers clean up microphone audio for calls (noise suppression, echo cancellation, automatic
# gain); that reshapes the spectrum a speaker model listens to, so the app asks for the raw signal.
RAW_MICROPHONE = """<script>
(() => {
  const devices = navigator.mediaDevices;
  if (!devices || !devices.getUserMedia) return;
  const getUserMedia = devices.getUserMedia.bind(devices);
  devices.getUserMedia = (constraints) => {
    if (constraints && constraints.audio) {
      const audio = typeof constraints.audio === "object" ? constraints.audio : {};
      constraints = {...constraints, audio: {...audio, echoCancellation: false, noiseSuppression: false,
                                              autoGainControl: false}};
    }
    return getUserMedia(constraints);
  };
})();
</script>"""


def load_recognizer(checkpoint: str | Path, gallery_dir: str | Path | None) -> Recognizer:
    """A recognizer whose gallery is `<gallery_dir>/<model fingerprint>.json` (one gallery per model);
    without a folder it has none (visitors bring their own)."""
    loaded = load_checkpoint(checkpoint)
    return Recognizer(loaded, Path(gallery_dir) / f"{fingerprint(loaded)}.json" if gallery_dir else None)


def picture(png: bytes) -> PlotData:
    """A figure rendered already, as gr.Plot sends one it renders itself: a PNG data URL."""
    return PlotData(type="matplotlib", plot="data:image/png;base64," + base64.b64encode(png).decode("ascii"))


def user_errors(handler):
    """Show InputError messages in the UI as an error toast; the app keeps serving."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except InputError as error:
            raise gr.Error(str(error), title="Cannot use this input", print_exception=False) from None

    return wrapped


class Handlers:
    """Event handlers: Gradio values in, Gradio values out; the work is the recognizer's.

    With `per_visitor`, each handler's last argument is the visitor's own gallery (a gr.State,
    None until the first enrollment) and those that change it return it last.
    """

    def __init__(self, recognizer: Recognizer, per_visitor: bool = False):
        self.recognizer = recognizer
        self.per_visitor = per_visitor
        self.uploads: set[str] = set()  # Gradio's set of uploaded files (build_demo links it)
        # The plots are drawn into kept figures and sent rendered (speaker_app.plots.Kept): about a third less time.
        self.kept_features, self.kept_attention = plots.Kept(plots.features_layout), plots.Kept(plots.attention_layout)
        self.segment_files: Path | None = None  # where the diarization downloads are written

    def _for(self, visitor: Gallery | None, create: bool = False) -> Recognizer:
        """The recognizer with the gallery this request sees: the shared one, or the visitor's."""
        if not self.per_visitor:
            return self.recognizer
        if visitor is None and create:
            visitor = self.recognizer.new_gallery()
        return self.recognizer.with_gallery(visitor)

    def _visitor(self, recognizer: Recognizer) -> tuple:
        """The visitor's gallery as the last output, in per-visitor mode."""
        return (recognizer.gallery,) if self.per_visitor else ()

    def _delete_uploads(self, paths) -> None:
        """Enrollment clips are deleted once embedded: a deleted speaker leaves no audio behind. (Other
        uploads stay until the cache cleanup, DELETE_CACHE, so that Identify can run again on them.)
        Only files that visitors uploaded are touched, never an example or a file named by a program."""
        uploaded = {str(Path(p).resolve()): p for p in list(self.uploads)}  # Gradio may record them relative
        for path in paths:
            recorded = uploaded.get(str(Path(path).resolve())) if path else None
            if recorded is not None:
                Path(path).unlink(missing_ok=True)
                self.uploads.discard(recorded)

    @user_errors
    def answer(self, audio: str | None, feature_file: str | None, top_k: int = DEFAULT_TOP_K,
               visitor: Gallery | None = None):
        """-> top-k {speaker: probability}, verdict, explanation (state); the model runs once."""
        source = feature_file or audio
        if source is None:
            raise InputError("upload or record audio, or choose a feature file (.pt or .npy), first")
        recognizer = self._for(visitor)
        result, explanation = recognizer.identify_explained(source, int(top_k))
        for note in result.notes:
            if note != recognizer.unexplained:  # said in the verdict; no toast on every request
                gr.Warning(note)
        return describe.top_speakers(result), describe.verdict(result, recognizer), explanation

    def plots(self, explanation: Explanation | None, layer: int = 1, head: int = 0):
        """-> features plot, attention plot: drawn after the answer, from its explanation."""
        if explanation is None:
            return None, None
        return (picture(self.kept_features.png(lambda figure: self.features_figure(explanation, figure))),
                self.show_attention(explanation, layer, head))

    def identify(self, audio: str | None, feature_file: str | None, top_k: int = DEFAULT_TOP_K,
                 layer: int = 1, head: int = 0, visitor: Gallery | None = None):
        """Everything the Identify tab shows, in one call: top-k, verdict, both plots, explanation."""
        label, verdict, explanation = self.answer(audio, feature_file, top_k, visitor)
        return (label, verdict, *self.plots(explanation, layer, head), explanation)

    def features_figure(self, explanation: Explanation | None, figure=None):
        """The features and pooling weights, drawn into `figure` (a `plots.features_layout()`, else a new one)."""
        if explanation is None:
            return None
        frame_seconds = self.recognizer.features_config.frame_seconds
        title = "Log-mel features" + (f" (the first {len(explanation.features) * frame_seconds:.0f} s)"
                                      if explanation.truncated else "")
        return plots.features_figure(explanation.features, frame_seconds, explanation.pooling,
                                     explanation.frame_seconds, title, figure)

    def show_attention(self, explanation: Explanation | None, layer: int = 1, head: int = 0):
        """The attention plot for the layer and head menus."""
        if explanation is None:
            return None
        return picture(self.kept_attention.png(lambda figure: self.attention_figure(explanation, layer, head, figure)))

    @staticmethod
    def attention_figure(explanation: Explanation | None, layer: int = 1, head: int = 0, figure=None):
        """One layer's map, drawn into `figure` (a `plots.attention_layout()`, else a new one). Layer and head are
        1-based; head 0 is the mean over heads."""
        if explanation is None:
            return None
        layer = min(max(1, int(layer)), len(explanation.attention))
        maps = explanation.attention[layer - 1].float()  # (H, T', T'), kept in float16
        head = min(max(0, int(head)), len(maps))
        weights = maps.mean(0) if head == 0 else maps[head - 1]
        return plots.attention_figure(weights, explanation.seconds, layer, head or None, figure)

    def gallery(self, visitor: Gallery | None = None):
        """-> the enrolled speakers' table and the choices of the delete menu (names typed in work too)."""
        gallery = self._for(visitor).gallery
        rows = [list(row) for row in gallery.info()] if gallery is not None else []
        names = [row[0] for row in rows]
        return rows, gr.Dropdown(choices=names, value=names[0] if names else None)

    @user_errors
    def enroll(self, name: str, clips: list[str] | None, replace: bool = False, visitor: Gallery | None = None):
        """-> message, table, menu (and the visitor's gallery). A name that is enrolled already is
        refused unless `replace`: the page asks with its "Replace" box."""
        recognizer = self._for(visitor, create=True)
        clips = list(clips or [])
        try:
            before = recognizer.gallery.find(name or "")
        except ValueError:  # an invalid name: enroll says why
            before = None
        enrolled = recognizer.enroll_report(name or "", clips, replace=bool(replace))
        self._delete_uploads(clips)
        verb = "Replaced" if before is not None else "Enrolled"
        pieces = f", cut into {enrolled.clips} pieces" if enrolled.clips > len(clips) else ""
        message = (f"{verb} **{describe.markdown_text(enrolled.name)}** from {len(clips)} clip{'s' * (len(clips) > 1)} "
                   f"({enrolled.seconds:.1f} s of speech{pieces}). The Identify tab now considers this speaker too.")
        if enrolled.advice:
            message += "\n\n" + "\n".join(f"- **Advice:** {describe.markdown_text(a)}" for a in enrolled.advice)
        return (message, *self.gallery(recognizer.gallery), *self._visitor(recognizer))

    @staticmethod
    def add_recording(clips: list[str] | None, recording: str | None):
        """A finished microphone recording joins the enrollment clips; the recorder is cleared."""
        clips = list(clips or [])
        if recording:
            clips.append(recording)
        return clips, None

    def forget(self, name: str | None, visitor: Gallery | None = None):
        """Delete the enrolled speaker `name` (any client may send any string); other names are never listed."""
        name = str(name or "").strip()
        if not name:
            raise gr.Error("choose or type the name of an enrolled speaker to delete", print_exception=False)
        recognizer = self._for(visitor)
        removed = recognizer.forget(name)
        message = (f"Deleted **{describe.markdown_text(removed)}**." if removed
                   else f"**{describe.markdown_text(name)}** is not enrolled.")
        return (message, *self.gallery(recognizer.gallery), *self._visitor(recognizer))

    @user_errors
    def diarize(self, audio: str | None, speakers: float | None = 0, visitor: Gallery | None = None,
                progress=gr.Progress()):
        """-> summary, timeline, segment rows, [RTTM, CSV], unknown speakers' menu, diarization (state)."""
        if not audio:
            raise InputError("upload or record a conversation first")
        speakers = int(speakers or 0)
        if speakers < 0:
            raise InputError(f"the number of speakers must be 0 (estimate it) or more, got {speakers}")

        def report(done: float, total: float):
            progress(done / total if total else 1.0, desc=f"{done:.0f} of {total:.0f} s analysed")

        recognizer = self._for(visitor)
        result = diarize.diarize_file(audio, recognizer, count=Count(speakers or None), max_seconds=MAX_DIARIZE_SECONDS,
                                      keep_clips=True, progress=report)
        for note in result.notes:
            gr.Warning(note)
        stem = Path(audio).stem
        rows = [[round(s.start, 2), round(s.end, 2), s.speaker, None if s.score != s.score else round(s.score, 3)]
                for s in result.segments]
        unknown = [s.name for s in result.speakers if not s.known]
        return (describe.diarization(result), plots.timeline_figure(result.segments, result.duration), rows,
                self.downloads(result, stem), gr.Dropdown(choices=unknown, value=unknown[0] if unknown else None),
                result)

    def downloads(self, result, stem: str) -> list[str]:
        """The segments as RTTM and CSV files in a folder of their own. Gradio serves copies from its upload
        cache (cleaned by DELETE_CACHE); these originals are deleted as old once they are as old."""
        if self.segment_files is None:
            self.segment_files = Path(tempfile.mkdtemp(prefix="speaker-app-segments-"))
        for old in self.segment_files.iterdir():
            if time.time() - old.stat().st_mtime > DELETE_CACHE[1]:
                shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(dir=self.segment_files))
        rttm = write_rttm(result.segments, stem, folder / f"{stem}.rttm")
        table = folder / f"{stem}.csv"
        table.write_text(csv_text(result.segments))
        return [str(rttm), str(table)]

    @user_errors
    def enroll_found(self, result, speaker: str | None, name: str, visitor: Gallery | None = None):
        """Enroll an unknown speaker of the last diarization from their longest segments (up to 5)."""
        found = result.speaker(speaker) if result is not None and speaker else None
        if found is None:
            raise InputError("find who speaks when first, then choose one of the unknown speakers")
        if not found.clips:
            raise InputError(f"{speaker} has no segment long enough to enroll from")
        recognizer = self._for(visitor, create=True)
        stored = recognizer.enroll(name or "", found.clips)
        message = (f"Enrolled **{describe.markdown_text(stored)}** from {len(found.clips)} segment"
                   f"{'s' * (len(found.clips) > 1)} of {describe.markdown_text(speaker)} "
                   f"({found.seconds:.0f} s of speech). Run again to see them named.")
        return (message, *self.gallery(recognizer.gallery), *self._visitor(recognizer))

    @user_errors
    def verify(self, first: str | None, second: str | None):
        """-> verdict and the decision score (cosine similarity, or AS-norm when the model carries a cohort)."""
        if not first or not second:
            raise InputError("give two clips: upload or record one on each side")
        result = self.recognizer.verify(first, second)
        return describe.verification(result, self.recognizer), float(result.score)  # unrounded: the verdict rounds it


def read_examples() -> list[dict]:
    """Rows of examples/sources.csv whose file exists."""
    listing = EXAMPLES / "sources.csv"
    if not listing.is_file():
        return []
    with open(listing, newline="") as handle:
        return [row for row in csv.DictReader(handle) if (EXAMPLES / row["file"]).is_file()]


def examples_table(inputs: list) -> gr.Examples | None:
    """Held-out clips and a feature file; a row fills the audio or the feature input and clears the other."""
    rows = read_examples()
    if not rows:
        return None
    return gr.Examples(
        [[None, str(EXAMPLES / r["file"])] if r["file"].endswith((".pt", ".npy")) else [str(EXAMPLES / r["file"]), None]
         for r in rows],
        inputs=inputs, cache_examples=False, example_labels=[f"{r['author']}: {r['file']}" for r in rows],
        label="Examples held out from training (sources and licences: examples/README.md)")


def identify_tab(handlers: Handlers, config, visitor: list):
    with gr.Row():
        with gr.Column(scale=2):
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="identify-audio",
                             label="Audio: upload a file (wav, flac, ogg, mp3; any rate) or record")
            feature_file = gr.File(file_types=[".pt", ".npy"], elem_id="feature-file",
                                   label="…or a feature file: a (T, 40) tensor, .pt or .npy")
            top_k = gr.Slider(1, min(10, len(handlers.recognizer.speakers)), value=DEFAULT_TOP_K, step=1,
                              label="Top-k speakers")
            button = gr.Button("Identify", variant="primary")
            examples = examples_table([audio, feature_file])
        with gr.Column(scale=3):
            verdict = gr.Markdown(elem_id="verdict", **PLAIN)
            label = gr.Label(label="Top speakers (probability)", elem_id="top-speakers")
    features_plot = gr.Plot(label="Features and pooling weights", format="png")
    with gr.Row():
        layer = gr.Dropdown([(f"layer {i}", i) for i in range(1, config.n_layers + 1)], value=1, label="Layer")
        head = gr.Dropdown([("mean of all heads", 0)] + [(f"head {i}", i) for i in range(1, config.n_heads + 1)],
                           value=0, label="Head")
    attention_plot = gr.Plot(label="Self-attention map", format="png")
    explanation = gr.State(time_to_live=900)  # the attention maps shown: up to ~9 MB for 15 s of speech

    # The answer first (API clients get only this), then the plots drawn from the same model pass.
    answer = dict(fn=handlers.answer, inputs=[audio, feature_file, top_k, *visitor],
                  outputs=[label, verdict, explanation], concurrency_id=IDENTIFY, concurrency_limit=MAX_BATCH)
    draw = dict(fn=handlers.plots, inputs=[explanation, layer, head], outputs=[features_plot, attention_plot],
                concurrency_id=PLOTS, concurrency_limit=2, api_visibility="private")
    button.click(**answer, api_name="identify").success(**draw)
    # A new input replaces the other kind, then runs at once.
    audio.upload(lambda: None, outputs=feature_file, queue=False, api_visibility="private").then(
        **answer, api_visibility="private").success(**draw)
    audio.stop_recording(lambda: None, outputs=feature_file, queue=False, api_visibility="private").then(
        **answer, api_visibility="private").success(**draw)
    feature_file.upload(lambda: None, outputs=audio, queue=False, api_visibility="private").then(
        **answer, api_visibility="private").success(**draw)
    if examples:
        examples.load_input_event.then(**answer, api_visibility="private").success(**draw)
    for menu in (layer, head):
        menu.change(handlers.show_attention, [explanation, layer, head], attention_plot, api_visibility="private")


RECORD_SECONDS = (20, 30)  # bench.gallery: one recording of 20-30 s enrolls about as well as 5 clips
PARAGRAPH = ("On a cold morning the harbour was quiet. A few boats rocked by the pier, and a man in a yellow coat "
             "was painting numbers on their sides. Somewhere a radio played an old song about the sea. By nine "
             "o'clock the fog had lifted, the market opened, and the first visitors walked slowly along the water, "
             "looking for coffee, fresh bread and a place to sit in the sun.")
ENROLL_GUIDE = (f"**For the best chance of being recognised:** record yourself reading the paragraph below, about "
                f"{RECORD_SECONDS[0]}-{RECORD_SECONDS[1]} s, in a quiet room, with the microphone you will use later "
                "and at your usual voice and distance; stop the recorder, then press Enroll. Several clips work too: "
                "the more speech, the better (a few seconds each, the same person only). The app says when an "
                f"enrollment holds too little speech or when its parts do not sound alike.\n\n> {PARAGRAPH}")


def enroll_tab(handlers: Handlers, visitor: list):
    gr.Markdown("Enroll a new speaker from one microphone recording or one to five clips; identification then "
                "considers them beside the model's own speakers. "
                "The clips are deleted from the server once enrolled; only the voiceprint (embeddings: the clips' mean and each clip's) is kept"
                + (", in this browser session only." if handlers.per_visitor else "."))
    gr.Markdown(ENROLL_GUIDE, elem_id="enroll-guide")
    notices = handlers.recognizer.gallery.notices if handlers.recognizer.gallery is not None else []
    if notices:
        gr.Markdown("**When the gallery was opened:** " + "; ".join(describe.markdown_text(n) for n in notices),
                    elem_id="gallery-notices", **PLAIN)
    with gr.Row():
        with gr.Column():
            name = gr.Textbox(label="Name", max_lines=1, max_length=64, elem_id="enroll-name")
            clips = gr.File(file_count="multiple", file_types=["audio", ".pt", ".npy"], label="Clips (1 to 5)",
                            elem_id="enroll-clips")
            recording = gr.Audio(sources=["microphone"], type="filepath", elem_id="enroll-recording",
                                 label=f"Record (read the paragraph, about {RECORD_SECONDS[0]}-{RECORD_SECONDS[1]} s)")
            replace = gr.Checkbox(False, label="Replace the voiceprint if this name is enrolled already",
                                  elem_id="enroll-replace")
            button = gr.Button("Enroll", variant="primary")
            message = gr.Markdown(elem_id="enroll-message", **PLAIN)
        with gr.Column():
            table = gr.Dataframe(headers=["name", "clips", "enrolled"], interactive=False, label="Enrolled speakers",
                                 elem_id="enrolled-table")
            # Any name may be typed or sent (API clients have no menu); the menu lists this gallery's names.
            chosen = gr.Dropdown(label="Enrolled speaker", allow_custom_value=True, elem_id="enrolled-menu")
            delete = gr.Button("Delete", variant="stop")
    recording.stop_recording(handlers.add_recording, [clips, recording], [clips, recording], api_visibility="private")
    # A refused enrollment shows its error on the message only, not on the table and menu.
    button.click(handlers.enroll, [name, clips, replace, *visitor], [message, table, chosen, *visitor],
                 api_name="enroll", concurrency_id=MODEL, concurrency_limit=MAX_BATCH,
                 show_progress_on=[message]).success(lambda: (None, False), outputs=[clips, replace],
                                                     api_visibility="private")
    delete.click(handlers.forget, [chosen, *visitor], [message, table, chosen, *visitor], api_name="forget",
                 show_progress_on=[message])
    return handlers.gallery, [table, chosen]


def verify_tab(handlers: Handlers):
    gr.Markdown(f"Are two clips the same speaker? The {describe.score_name(handlers.recognizer.scorer.kind)} of "
                f"their embeddings is compared with a threshold. {describe.verification_note(handlers.recognizer)}.")
    with gr.Row():
        first = gr.Audio(sources=["upload", "microphone"], type="filepath", label="First clip")
        second = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Second clip")
    button = gr.Button("Compare", variant="primary")
    verdict = gr.Markdown(elem_id="verify-verdict")
    # The verdict shows the score; this hidden number gives API clients the value itself.
    score = gr.Number(label="Score (cosine, or AS-norm with a cohort)", interactive=False, visible=False)
    button.click(handlers.verify, [first, second], [verdict, score], api_name="verify", concurrency_id=MODEL,
                 concurrency_limit=MAX_BATCH)


def diarize_tab(handlers: Handlers, visitor: list, gallery_outputs: list):
    gr.Markdown("Who speaks when in a recording of several voices (a meeting, an interview, a call): each "
                "voice is named as a known or enrolled speaker, by the rule of Identify, or called unknown 1, "
                f"unknown 2, … The page takes the first {MAX_DIARIZE_SECONDS / 60:.0f} minutes of a recording; "
                "`python -m speaker_app.diarize` takes any length. One voice at a time: where two overlap, "
                "one of them is shown.")
    with gr.Row():
        with gr.Column(scale=2):
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="diarize-audio",
                             label="Recording: upload a file (wav, flac, ogg, mp3) or record")
            speakers = gr.Number(0, precision=0, minimum=0, label="Number of speakers (0: find out)")
            button = gr.Button("Find who speaks when", variant="primary")
        with gr.Column(scale=3):
            summary = gr.Markdown(elem_id="diarize-summary", **PLAIN)
            files = gr.File(label="Segments: RTTM and CSV", file_count="multiple", interactive=False,
                            elem_id="diarize-files")
    timeline = gr.Plot(label="Timeline", format="png", elem_id="diarize-timeline")
    table = gr.Dataframe(headers=["start (s)", "end (s)", "speaker", "score"], interactive=False,
                         label="Segments", elem_id="diarize-table")
    with gr.Accordion("Enroll a speaker found here", open=False):
        with gr.Row():
            unknown = gr.Dropdown(label="Unknown speaker", choices=[], elem_id="diarize-unknown")
            name = gr.Textbox(label="Name", max_lines=1, max_length=64, elem_id="diarize-name")
            enroll = gr.Button("Enroll this speaker")
        message = gr.Markdown(elem_id="diarize-message", **PLAIN)
    result = gr.State(time_to_live=900)  # the speakers' longest segments' features: ~2 MB for 5 unknown voices
    button.click(handlers.diarize, [audio, speakers, *visitor], [summary, timeline, table, files, unknown, result],
                 api_name="diarize", concurrency_id=MODEL, concurrency_limit=2)
    enroll.click(handlers.enroll_found, [result, unknown, name, *visitor], [message, *gallery_outputs, *visitor],
                 api_name="enroll_found", concurrency_id=MODEL, concurrency_limit=MAX_BATCH)


def model_tab(recognizer: Recognizer, checkpoint: str | Path):
    gr.Markdown(describe.model_summary(recognizer, shown_path(checkpoint)))
    card = Path(checkpoint).parent / "README.md"
    if card.is_file():
        with gr.Accordion(f"Model card ({card.name} beside the checkpoint)", open=False):
            gr.Markdown(card.read_text(encoding="utf-8", errors="replace"))


def shown_path(path: str | Path) -> str:
    """A path as the page may show it: relative to the app's folder, else the file's name only."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def build_demo(recognizer: Recognizer, checkpoint: str | Path, per_visitor: bool = False) -> gr.Blocks:
    """The page. per_visitor: each visitor enrolls into a gallery of their own session (gr.State), never
    seen by others and never written to disk; otherwise every visitor shares `recognizer.gallery`."""
    handlers = Handlers(recognizer, per_visitor)
    with gr.Blocks(title="Speaker identification", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# Who is speaking?\nA Conformer speaker model: identify a voice among the model's "
                    f"{len(recognizer.speakers)} speakers and those you enroll, see where it listened, "
                    "or check whether two clips are the same speaker.")
        # A visitor's gallery, dropped an hour after they leave (gr.State's time_to_live counts from the last change).
        visitor = [gr.State(None, time_to_live=3600)] if per_visitor else []
        with gr.Tab("Identify"):
            identify_tab(handlers, recognizer.checkpoint.model_config, visitor)
        with gr.Tab("Enroll"):
            refresh, gallery_outputs = enroll_tab(handlers, visitor)
        with gr.Tab("Verify"):
            verify_tab(handlers)
        with gr.Tab("Who speaks when"):
            diarize_tab(handlers, visitor, gallery_outputs)
        with gr.Tab("Model"):
            model_tab(recognizer, checkpoint)
        demo.load(refresh, inputs=visitor, outputs=gallery_outputs, api_visibility="private")
    handlers.uploads = demo.upload_file_set  # the files visitors uploaded, as Gradio records them
    # Before any visit, the files in Gradio's cache are the page's own (the examples' copies): the
    # cleanup must spare them, or the examples stop working after DELETE_CACHE's age.
    for block in demo.blocks.values():
        if isinstance(block, gr.components.Component):
            block.keep_in_cache.update(block.temp_files)
    return demo


def unavailable_demo(problem: str) -> gr.Blocks:
    """What `gradio app.py` serves when the model cannot be loaded: the reason, not a stack trace."""
    with gr.Blocks(title="Speaker identification", analytics_enabled=False) as demo:
        gr.Markdown(f"# No model loaded\n{problem}\n\nPut a checkpoint at `checkpoints/default.pt`, "
                    "set `SPEAKER_CHECKPOINT`, or run `python app.py --checkpoint PATH`.")
    return demo


def default_paths() -> tuple[Path, Path]:
    checkpoint = Path(os.environ.get("SPEAKER_CHECKPOINT") or DEFAULT_CHECKPOINT)
    return checkpoint, Path(os.environ.get("SPEAKER_GALLERY") or "gallery")


def default_galleries() -> str:
    """$SPEAKER_GALLERIES if set; else per-visitor galleries on a public Hugging Face Space ($SPACE_ID is set
    there), one shared gallery elsewhere."""
    chosen = os.environ.get("SPEAKER_GALLERIES") or ("per-visitor" if os.environ.get("SPACE_ID") else "shared")
    if chosen not in ("shared", "per-visitor"):
        raise ValueError(f"SPEAKER_GALLERIES must be 'shared' or 'per-visitor', not {chosen!r}")
    return chosen


def default_threads() -> int:
    """Half the cores this process may use, at least one: under load the server's other threads (HTTP,
    audio decoding, plots) need the rest. On 2 cores, 16 users x 10 requests (bench/load.py) had a p95
    of 2.2 to 3.0 s over five runs with one torch thread against 2.7 and 2.9 s with two (2026-12-01, while
    the benchmark's own clients still took much of the CPU); one request alone takes 5 ms longer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores // 2)


def main(argv=None) -> int:
    heap.limit_arenas()
    heap.trim_every(HEAP_TRIM_SECONDS)
    checkpoint, gallery = default_paths()
    try:
        galleries = default_galleries()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=checkpoint,
                        help=f"model to serve: a checkpoint, or an ONNX export (.onnx) (default: {checkpoint})")
    parser.add_argument("--gallery", type=Path, default=gallery,
                        help=f"folder of the shared gallery of enrolled speakers (default: {gallery})")
    parser.add_argument("--galleries", choices=["shared", "per-visitor"], default=galleries,
                        help="one gallery on disk for every visitor, or one per visitor's session, kept in memory "
                             "(default: $SPEAKER_GALLERIES, else per-visitor where $SPACE_ID is set, as on Hugging "
                             "Face Spaces, else shared)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="threads the model computes with (default: half the cores, %(default)s here)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    per_visitor = args.galleries == "per-visitor"
    try:
        recognizer = load_recognizer(args.checkpoint, None if per_visitor else args.gallery)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for notice in recognizer.gallery.notices if recognizer.gallery is not None else []:
        print(f"warning: {notice}", file=sys.stderr)
    uploads = Path(os.environ.setdefault("GRADIO_TEMP_DIR", UPLOADS))
    uploads.mkdir(mode=0o700, parents=True, exist_ok=True)
    port = os.environ.get("GRADIO_SERVER_PORT")
    build_demo(recognizer, args.checkpoint, per_visitor).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=int(port) if port else None,
        max_file_size=MAX_UPLOAD, head=RAW_MICROPHONE, state_session_capacity=SESSIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:
    # Imported by `gradio app.py` or a test: serve the default (or $SPEAKER_CHECKPOINT) model.
    try:
        _per_visitor = default_galleries() == "per-visitor"
        _checkpoint, _gallery = default_paths()
        demo = build_demo(load_recognizer(_checkpoint, None if _per_visitor else _gallery), _checkpoint, _per_visitor)
    except (CheckpointError, ValueError) as error:
        demo = unavailable_demo(str(error))

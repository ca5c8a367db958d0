"""The Gradio demo: who is speaking? Identify, enroll and verify speakers.

    python app.py [--checkpoint PATH] [--gallery DIR]

The checkpoint comes from --checkpoint, else $SPEAKER_CHECKPOINT, else
checkpoints/default.pt; enrolled speakers live in a gallery folder (--gallery,
else $SPEAKER_GALLERY, else ./gallery), one JSON file per model. It serves on
127.0.0.1 unless $GRADIO_SERVER_NAME says otherwise ($GRADIO_SERVER_PORT for the
port). `gradio app.py` and tests import `demo`; the handlers only translate
between Gradio values and `speaker_app.recognizer.Recognizer`.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import functools
import os
import sys
from pathlib import Path

import gradio as gr

from speaker_app import describe, plots
from speaker_app.checkpoint import CheckpointError, load_checkpoint
from speaker_app.recognizer import Explanation, InputError, Recognizer, fingerprint

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default.pt"
EXAMPLES = ROOT / "examples"
MAX_UPLOAD = "50mb"  # larger uploads are refused by the server; 10 min of 16-bit 44.1 kHz stereo is ~100 MB
DEFAULT_TOP_K = 5
MODEL = "model"  # one queue for every event that runs the model: one at a time on a small CPU
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


def load_recognizer(checkpoint: str | Path, gallery_dir: str | Path) -> Recognizer:
    """A recognizer whose gallery is `<gallery_dir>/<model fingerprint>.json`: one gallery per model."""
    loaded = load_checkpoint(checkpoint)
    return Recognizer(loaded, Path(gallery_dir) / f"{fingerprint(loaded)}.json")


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
    """Event handlers: Gradio values in, Gradio values out; the work is the recognizer's."""

    def __init__(self, recognizer: Recognizer):
        self.recognizer = recognizer

    @user_errors
    def identify(self, audio: str | None, feature_file: str | None, top_k: int = DEFAULT_TOP_K,
                 layer: int = 1, head: int = 0):
        """-> top-k {speaker: probability}, verdict, features plot, attention plot, explanation (state)."""
        source = feature_file or audio
        if source is None:
            raise InputError("upload or record audio, or choose a feature file (.pt or .npy), first")
        features, notes = self.recognizer.features(source)
        result = self.recognizer.identify(features, int(top_k))
        result.notes = notes + result.notes
        try:
            explanation = self.recognizer.explain(features)
        except NotImplementedError as error:  # an ONNX model: no attention maps or pooling weights
            explanation = None
            result.notes.append(str(error))
        for note in notes:
            gr.Warning(note)
        return (describe.top_speakers(result), describe.verdict(result, self.recognizer),
                self.features_plot(explanation), self.show_attention(explanation, layer, head), explanation)

    def features_plot(self, explanation: Explanation | None):
        if explanation is None:
            return None
        frame_seconds = self.recognizer.features_config.frame_seconds
        title = "Log-mel features" + (f" (the first {len(explanation.features) * frame_seconds:.0f} s)"
                                      if explanation.truncated else "")
        return plots.features_figure(explanation.features, frame_seconds, explanation.pooling,
                                     explanation.frame_seconds, title)

    @staticmethod
    def show_attention(explanation: Explanation | None, layer: int = 1, head: int = 0):
        """Layer and head are 1-based; head 0 is the mean over heads."""
        if explanation is None:
            return None
        layer = min(max(1, int(layer)), len(explanation.attention))
        maps = explanation.attention[layer - 1]  # (H, T', T')
        head = min(max(0, int(head)), len(maps))
        weights = maps.mean(0) if head == 0 else maps[head - 1]
        return plots.attention_figure(weights, explanation.frame_seconds, layer, head or None)

    def gallery(self):
        """-> the enrolled speakers' table and the choices of the delete menu."""
        gallery = self.recognizer.gallery
        rows = [list(row) for row in gallery.info()] if gallery else []
        names = [row[0] for row in rows]
        return rows, gr.Dropdown(choices=names, value=names[0] if names else None)

    @user_errors
    def enroll(self, name: str, clips: list[str] | None):
        before = set(self.recognizer.gallery.names()) if self.recognizer.gallery else set()
        stored = self.recognizer.enroll(name or "", list(clips or []))
        verb = "Updated" if stored in before else "Enrolled"
        message = (f"{verb} **{describe.markdown_text(stored)}** from {len(clips)} clip{'s' * (len(clips) > 1)}. "
                   "The Identify tab now considers this speaker too.")
        return (message, *self.gallery())

    @staticmethod
    def add_recording(clips: list[str] | None, recording: str | None):
        """A finished microphone recording joins the enrollment clips; the recorder is cleared."""
        clips = list(clips or [])
        if recording:
            clips.append(recording)
        return clips, None

    def forget(self, name: str | None):
        if not name:
            raise gr.Error("choose an enrolled speaker to delete", print_exception=False)
        removed = self.recognizer.forget(name)
        shown = describe.markdown_text(name)
        message = f"Deleted **{shown}**." if removed else f"**{shown}** was not enrolled."
        return (message, *self.gallery())

    @user_errors
    def verify(self, first: str | None, second: str | None):
        """-> verdict and the decision score (cosine similarity, or AS-norm when the model carries a cohort)."""
        if not first or not second:
            raise InputError("give two clips: upload or record one on each side")
        result = self.recognizer.verify(first, second)
        return describe.verification(result, self.recognizer), round(result.score, 4)


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


def identify_tab(handlers: Handlers, config):
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
            verdict = gr.Markdown(elem_id="verdict")
            label = gr.Label(label="Top speakers (probability)", elem_id="top-speakers")
    features_plot = gr.Plot(label="Features and pooling weights", format="png")
    with gr.Row():
        layer = gr.Dropdown([(f"layer {i}", i) for i in range(1, config.n_layers + 1)], value=1, label="Layer")
        head = gr.Dropdown([("mean of all heads", 0)] + [(f"head {i}", i) for i in range(1, config.n_heads + 1)],
                           value=0, label="Head")
    attention_plot = gr.Plot(label="Self-attention map", format="png")
    explanation = gr.State(time_to_live=900)  # the attention maps shown: up to ~9 MB for 15 s of speech

    run = dict(fn=handlers.identify, inputs=[audio, feature_file, top_k, layer, head],
               outputs=[label, verdict, features_plot, attention_plot, explanation], concurrency_id=MODEL)
    button.click(**run, api_name="identify")
    # A new input replaces the other kind, then runs at once.
    audio.upload(lambda: None, outputs=feature_file, queue=False, api_visibility="private").then(
        **run, api_visibility="private")
    audio.stop_recording(lambda: None, outputs=feature_file, queue=False, api_visibility="private").then(
        **run, api_visibility="private")
    feature_file.upload(lambda: None, outputs=audio, queue=False, api_visibility="private").then(
        **run, api_visibility="private")
    if examples:
        examples.load_input_event.then(**run, api_visibility="private")
    for menu in (layer, head):
        menu.change(handlers.show_attention, [explanation, layer, head], attention_plot, api_visibility="private")



def enroll_tab(handlers: Handlers):
    gr.Markdown("Enroll a new speaker from one to five clips; identification then considers them "
                "beside the model's own speakers. Each microphone recording is added to the clips when you stop it.")
    with gr.Row():
        with gr.Column():
            name = gr.Textbox(label="Name", max_lines=1, max_length=64)
            clips = gr.File(file_count="multiple", file_types=["audio", ".pt", ".npy"], label="Clips (1 to 5)")
            recording = gr.Audio(sources=["microphone"], type="filepath", label="Record a clip")
            button = gr.Button("Enroll", variant="primary")
            message = gr.Markdown(elem_id="enroll-message")
        with gr.Column():
            table = gr.Dataframe(headers=["name", "clips", "enrolled"], interactive=False, label="Enrolled speakers")
            chosen = gr.Dropdown(label="Enrolled speaker")
            delete = gr.Button("Delete", variant="stop")
    recording.stop_recording(handlers.add_recording, [clips, recording], [clips, recording], api_visibility="private")
    button.click(handlers.enroll, [name, clips], [message, table, chosen], api_name="enroll", concurrency_id=MODEL)
    delete.click(handlers.forget, chosen, [message, table, chosen], api_name="forget")
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
    button.click(handlers.verify, [first, second], [verdict, score], api_name="verify", concurrency_id=MODEL)


def model_tab(recognizer: Recognizer, checkpoint: str | Path):
    gr.Markdown(describe.model_summary(recognizer, checkpoint))
    card = Path(checkpoint).parent / "README.md"
    if card.is_file():
        with gr.Accordion(f"Model card ({card.name} beside the checkpoint)", open=False):
            gr.Markdown(card.read_text(encoding="utf-8", errors="replace"))


def build_demo(recognizer: Recognizer, checkpoint: str | Path) -> gr.Blocks:
    handlers = Handlers(recognizer)
    # No delete_cache: in Gradio 6.31 it also deletes the examples' cached copies, which breaks them.
    with gr.Blocks(title="Speaker identification", analytics_enabled=False) as demo:
        gr.Markdown("# Who is speaking?\nA Conformer speaker model: identify a voice among the model's "
                    f"{len(recognizer.speakers)} speakers and those you enroll, see where it listened, "
                    "or check whether two clips are the same speaker.")
        with gr.Tab("Identify"):
            identify_tab(handlers, recognizer.checkpoint.model_config)
        with gr.Tab("Enroll"):
            refresh, gallery_outputs = enroll_tab(handlers)
        with gr.Tab("Verify"):
            verify_tab(handlers)
        with gr.Tab("Model"):
            model_tab(recognizer, checkpoint)
        demo.load(refresh, outputs=gallery_outputs, api_visibility="private")
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


def limit_heap_arenas(arenas: int = 2):
    """glibc gives threads their own heaps ("arenas"); a server that answers from a pool of threads
    then keeps growing. Two arenas keep its memory level: after 480 requests under load
    (bench/load.py) the server held 1173 MB with the default and 922 MB with two."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def main(argv=None) -> int:
    limit_heap_arenas()
    checkpoint, gallery = default_paths()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=checkpoint,
                        help=f"model to serve: a checkpoint, or an ONNX export (.onnx) (default: {checkpoint})")
    parser.add_argument("--gallery", type=Path, default=gallery,
                        help=f"folder of enrolled speakers (default: {gallery})")
    args = parser.parse_args(argv)
    try:
        recognizer = load_recognizer(args.checkpoint, args.gallery)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    port = os.environ.get("GRADIO_SERVER_PORT")
    build_demo(recognizer, args.checkpoint).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=int(port) if port else None,
        max_file_size=MAX_UPLOAD, head=RAW_MICROPHONE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:
    # Imported by `gradio app.py` or a test: serve the default (or $SPEAKER_CHECKPOINT) model.
    try:
        demo = build_demo(load_recognizer(*default_paths()), default_paths()[0])
    except (CheckpointError, ValueError) as error:
        demo = unavailable_demo(str(error))

"""Figures for the app: the log-mel features with the pooling weights under them, one
self-attention map (times are seconds of the speech kept after silence removal), and the
diarization timeline (times are the recording's).

Figures are built on matplotlib's object API with the Agg canvas, never through
pyplot: pyplot keeps global state that is not thread-safe (the app draws from
worker threads) and holds every figure until it is closed. Axes sit at fixed
places in fixed-size figures: a layout engine would cost a third of the drawing
time, and the app answers within a second.

Each figure is built in two steps: its layout (axes, labels, colour bar), then
its data (image, weights, limits, title). The app keeps the layouts it has built
(`Kept`) and draws each answer's data into a free one: building the axes and
their ticks, and measuring their text afresh, cost more than drawing them.
"""

from __future__ import annotations

import io
import queue
from collections.abc import Callable

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

TIME_LABEL = "time (s), silence removed"


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def features_layout() -> Figure:
    """The features figure without data: a spectrogram over a bar of pooling weights, sharing the time axis."""
    figure = _figure(10, 4.4)
    # [left, bottom, width, height] as fractions of the figure.
    spectrum = figure.add_axes((0.08, 0.47, 0.82, 0.45))
    colorbar = figure.add_axes((0.91, 0.47, 0.012, 0.45), label="<colorbar>")
    weights = figure.add_axes((0.08, 0.11, 0.82, 0.23), sharex=spectrum)
    image = spectrum.imshow(np.zeros((1, 1)), origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
    spectrum.set_ylabel("mel bin")
    spectrum.tick_params(labelbottom=False)
    figure.colorbar(image, cax=colorbar, label="log energy")
    weights.stairs([0.0], [0.0, 1.0], fill=True, color="tab:blue", alpha=0.7)
    weights.set_ylabel("pooling\nweight")
    weights.set_xlabel(TIME_LABEL)
    weights.set_title("Attentive pooling: how much each moment counts towards the embedding", fontsize="medium")
    return figure


def features_figure(features: torch.Tensor, frame_seconds: float, pooling: torch.Tensor, pooling_seconds: float,
                    title: str = "Log-mel features", figure: Figure | None = None) -> Figure:
    """(T, n_mels) features as a spectrogram, and the (T',) pooling weights under it on the same time axis,
    drawn into `figure` (a `features_layout()`; a new one if None).

    frame_seconds: seconds per feature frame; pooling_seconds: seconds per encoder frame.
    """
    figure = figure or features_layout()
    spectrum, _, weights = figure.axes
    frames, n_mels = features.shape
    duration = frames * frame_seconds
    values = features.T.numpy()
    (image,) = spectrum.images
    image.set_data(values)
    image.set_extent((0, duration, 0, n_mels))
    image.set_clim(float(values.min()), float(values.max()))  # the colour bar follows
    spectrum.set_ylim(0, n_mels)
    spectrum.set_title(title)
    edges = torch.arange(len(pooling) + 1) * pooling_seconds
    (stairs,) = weights.patches
    stairs.set_data(pooling.numpy(), edges.numpy())
    weights.set_xlim(0, duration)
    weights.set_ylim(0, float(pooling.max()) * 1.1 or 1.0)
    return figure


def attention_layout() -> Figure:
    """The attention figure without data: a square map and its colour bar."""
    figure = _figure(6.4, 5.6)
    axes = figure.add_axes((0.13, 0.1, 0.66, 0.8))
    colorbar = figure.add_axes((0.83, 0.14, 0.025, 0.72), label="<colorbar>")
    # A square-root colour scale: each row sums to 1 over hundreds of keys, so most weights are tiny.
    image = axes.imshow(np.zeros((1, 1)), origin="upper", aspect="equal", cmap="viridis", interpolation="nearest",
                        norm=PowerNorm(0.5, vmin=0, vmax=1))
    axes.set_xlabel("attended-to time (key), s")
    axes.set_ylabel("attending time (query), s")
    figure.colorbar(image, cax=colorbar, label="attention weight (square-root scale)")
    return figure


def attention_figure(weights: torch.Tensor, duration: float, layer: int, head: int | None,
                     figure: Figure | None = None) -> Figure:
    """An (N, N) self-attention map over `duration` seconds, row = query time, column = key time, drawn into
    `figure` (an `attention_layout()`; a new one if None).

    layer and head are 1-based, as shown to the user; head None means the heads' mean.
    """
    figure = figure or attention_layout()
    axes = figure.axes[0]
    (image,) = axes.images
    image.set_data(weights.numpy())
    image.set_extent((0, duration, duration, 0))
    image.set_clim(0, max(float(weights.max()), 1e-6))
    axes.set_xlim(0, duration)
    axes.set_ylim(duration, 0)
    which = "mean of all heads" if head is None else f"head {head}"
    axes.set_title(f"Self-attention, layer {layer}, {which}")
    return figure


def png(figure: Figure) -> bytes:
    """The figure as a PNG file: what Gradio's gr.Plot makes of a figure, but at zlib level 1, which
    takes a third less time than the default 6 for files about 8% larger."""
    with io.BytesIO() as buffer:
        figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
        return buffer.getvalue()


class Kept:
    """Figures of one layout, drawn again and again. Each call takes a free one (or builds one), draws
    into it and renders it to PNG before giving it back, so no caller ever sees a figure that another
    may change, and there are as many as calls ever ran at once."""

    def __init__(self, layout: Callable[[], Figure]):
        self.layout = layout
        self.free: queue.SimpleQueue[Figure] = queue.SimpleQueue()

    def png(self, draw: Callable[[Figure], Figure]) -> bytes:
        """draw(a figure of this layout), rendered to PNG."""
        try:
            figure = self.free.get_nowait()
        except queue.Empty:
            figure = self.layout()
        try:
            return png(draw(figure))
        finally:
            self.free.put(figure)


def timeline_figure(segments, duration: float, title: str = "Who speaks when") -> Figure:
    """Segments (start, end, speaker, ...) over `duration` seconds: one row per speaker, in order of first
    appearance from the top, coloured bars where they speak, the time axis in m:ss."""
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    speakers = list(dict.fromkeys(s.speaker for s in sorted(segments)))
    figure = _figure(10, 1.2 + 0.45 * max(1, len(speakers)))
    height = figure.get_figheight()
    axes = figure.add_axes((0.17, 0.75 / height, 0.8, 1 - 1.2 / height))
    for row, speaker in enumerate(speakers):
        bars = [(s.start, s.end - s.start) for s in segments if s.speaker == speaker]
        axes.broken_barh(bars, (row - 0.4, 0.8), facecolors=colormaps["tab10"](row % 10))
    axes.set_yticks(range(len(speakers)), [_short(s) for s in speakers])
    axes.set_ylim(len(speakers) - 0.5, -0.5)
    axes.set_xlim(0, max(duration, 1e-3))
    axes.xaxis.set_major_locator(MaxNLocator(nbins=10, steps=[1, 2, 3, 5, 6, 10]))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(x // 60)}:{int(x % 60):02d}"))
    axes.set_xlabel("time (m:ss)")
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(title)
    return figure


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"

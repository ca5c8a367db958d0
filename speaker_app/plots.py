"""Figures for the app: the log-mel features with the pooling weights under them, and one
self-attention map. Times are seconds of the speech kept after silence removal.

Figures are built on matplotlib's object API with the Agg canvas, never through
pyplot: pyplot keeps global state that is not thread-safe (the app draws from
worker threads) and holds every figure until it is closed. These figures own
no global state; whoever shows them (Gradio's `gr.Plot`) renders and drops them.
"""

from __future__ import annotations

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def features_figure(features: torch.Tensor, frame_seconds: float, pooling: torch.Tensor | None = None,
                    pooling_seconds: float | None = None, title: str = "Log-mel features") -> Figure:
    """(T, n_mels) features as a spectrogram; (T',) pooling weights under it on the same time axis.

    frame_seconds: seconds per feature frame; pooling_seconds: seconds per encoder frame.
    """
    frames, n_mels = features.shape
    duration = frames * frame_seconds
    rows = 2 if pooling is not None else 1
    figure = _figure(10, 4.2 if rows == 2 else 3)
    grid = figure.add_gridspec(rows, 2, width_ratios=[1, 0.015], height_ratios=[2.2, 1][:rows])
    spectrum = figure.add_subplot(grid[0, 0])
    image = spectrum.imshow(features.T.numpy(), origin="lower", aspect="auto", cmap="magma",
                            extent=(0, duration, 0, n_mels), interpolation="nearest")
    spectrum.set_ylabel("mel bin")
    spectrum.set_title(title)
    figure.colorbar(image, cax=figure.add_subplot(grid[0, 1], label="<colorbar>"), label="log energy")
    if pooling is None:
        spectrum.set_xlabel("time (s), silence removed")
        return figure
    spectrum.tick_params(labelbottom=False)
    weights = figure.add_subplot(grid[1, 0], sharex=spectrum)
    step = pooling_seconds if pooling_seconds is not None else duration / len(pooling)
    edges = torch.arange(len(pooling) + 1) * step
    weights.stairs(pooling.numpy(), edges.numpy(), fill=True, color="tab:blue", alpha=0.7)
    weights.set_xlim(0, duration)
    weights.set_ylim(0, float(pooling.max()) * 1.1 or 1.0)
    weights.set_ylabel("pooling\nweight")
    weights.set_xlabel("time (s), silence removed")
    weights.set_title("Attentive pooling: how much each moment counts towards the embedding", fontsize="medium")
    return figure


def attention_figure(weights: torch.Tensor, frame_seconds: float, layer: int, head: int | None) -> Figure:
    """A (T', T') self-attention map: row = query time, column = key time.

    layer and head are 1-based, as shown to the user; head None means the heads' mean.
    """
    frames = weights.shape[-1]
    duration = frames * frame_seconds
    figure = _figure(6.4, 5.4)
    axes = figure.add_subplot()
    # A square-root colour scale: each row sums to 1 over hundreds of keys, so most weights are tiny.
    image = axes.imshow(weights.numpy(), origin="upper", aspect="equal", cmap="viridis",
                        extent=(0, duration, duration, 0), interpolation="nearest",
                        norm=PowerNorm(0.5, vmin=0, vmax=max(float(weights.max()), 1e-6)))
    axes.set_xlabel("attended-to time (key), s")
    axes.set_ylabel("attending time (query), s")
    which = "mean of all heads" if head is None else f"head {head}"
    axes.set_title(f"Self-attention, layer {layer}, {which}")
    figure.colorbar(image, ax=axes, label="attention weight (square-root scale)", shrink=0.85)
    return figure

"""Small matplotlib figures shared by the notebooks (each returns the figure, never shows or saves it)."""

from __future__ import annotations

from collections import defaultdict

from typing import Mapping, Sequence

import matplotlib.pyplot as plt


def curve(xs: Sequence[float], ys: Sequence[float] | Mapping[str, Sequence[float]], xlabel: str, ylabel: str,
          title: str = "", logy: bool = False):
    """A line plot of one curve or several named curves sharing ``xs``; a curve given as a pair ``(x, y)`` uses its
    own x values."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    series = ys if isinstance(ys, Mapping) else {ylabel: ys}
    for name, y in series.items():
        x, y = y if isinstance(y, tuple) else (xs[: len(y)], y)
        ax.plot(x, y, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def tradeoff(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], xlabel: str,
             ylabel: str, title: str = "", origin: tuple[float, float] | None = None):
    """A trade-off plot: each series ``name -> (x, y, strengths)`` is a line through its settings, each point
    annotated with its strength; ``origin`` (the unsteered model's ``(x, y)``) is drawn as a black star."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, (x, y, strengths) in series.items():
        (line,) = ax.plot(x, y, marker="o", ms=3, label=name)
        for xi, yi, s in zip(x, y, strengths):
            ax.annotate(f"{s:g}", (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7,
                        color=line.get_color())
    if origin is not None:
        ax.plot(*origin, marker="*", color="black", ms=10, ls="", label="no steering")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def bars(values: Mapping[str, float], targets: Mapping[str, tuple[float, float]] | None = None, title: str = "",
         ylabel: str = "rate"):
    """Horizontal bars of ``values``; ``targets[name] = (low, high)`` is drawn as a shaded band."""
    names = list(values)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1))
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        if targets and n in targets:
            lo, hi = targets[n]
            ax.fill_betweenx([i - 0.4, i + 0.4], lo, hi, color="tab:green", alpha=0.2)
        ax.text(values[n] + 0.01, i, f"{values[n]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def labelled_points(points: Mapping[str, tuple[float, float]], xlabel: str, ylabel: str, title: str = "",
                    region: tuple[tuple[float, float], tuple[float, float]] | None = None, region_label: str = ""):
    """A scatter of named points ``name -> (x, y)``, each annotated with its name; ``region`` =
    ``((x_low, x_high), (y_low, y_high))`` is shaded (e.g. where every target holds)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if region is not None:
        (x0, x1), (y0, y1) = region
        ax.fill_between([x0, x1], y0, y1, color="tab:green", alpha=0.12, label=region_label or None)
    for name, (x, y) in points.items():
        ax.plot(x, y, marker="o", ls="", color="tab:blue")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if region_label:
        ax.legend(fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class LiveCurves:
    """A trainer callback that redraws reward / KL / entropy curves in one notebook output every ``every``
    updates (a no-op outside IPython)."""

    def __init__(self, title: str, every: int = 10, keys: Sequence[str] = ("reward", "kl", "entropy")):
        self.title, self.every, self.keys = title, every, keys
        self.hist: dict[str, list[float]] = defaultdict(list)
        self.handle = None

    def __call__(self, update: int, stats: dict) -> None:
        for k in self.keys:
            if k in stats:
                self.hist[k].append(stats[k])
        if update % self.every:
            return
        try:
            import matplotlib.pyplot as plt
            from IPython.display import display

        except ImportError:
            return
        fig = curve(range(len(self.hist["reward"])), dict(self.hist), "update", "value", self.title)
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        elif self.handle is not None:
            self.handle.update(fig)
        plt.close(fig)

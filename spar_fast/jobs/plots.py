"""The reports' figures (the world's miniature paper, resolution sweeps, the timing protocol):
panels of lines (a value against a resolution) or of labelled points (mIoU against time).

matplotlib is optional: :func:`save_figure` returns False without it, and the callers say so.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Panel:
    """One axes. ``lines``: ``{name: [(x, y), ...]}`` drawn as lines with markers; ``points``:
    ``{name: (x, y)}`` drawn as labelled dots; ``xlog``: log base of the x axis (None: linear); ``ylog``: a log y axis."""
    title: str
    xlabel: str
    ylabel: str
    lines: dict | None = None
    points: dict | None = None
    xlog: int | None = None
    ylog: bool = False


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _draw(ax, panel: Panel) -> None:
    for name, xy in (panel.lines or {}).items():
        xy = sorted(xy)
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=name)
    for name, (x, y) in (panel.points or {}).items():
        ax.scatter(x, y, label=name)
        ax.annotate(name, (x, y), fontsize=7)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 128, 0.5 rather than 2^7, 5x10^-1
    if panel.xlog:
        ax.set_xscale("log", base=panel.xlog)
        if panel.xlog == 10:
            ax.xaxis.set_major_locator(LogLocator(10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())  # no overlapping minor labels
    if panel.ylog:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title, fontsize=9)
    if panel.lines:
        ax.legend(fontsize=7)


def save_figure(path: str, panels: list[Panel], width: float = 6.0) -> bool:
    """Write ``panels`` side by side as one PNG at ``path`` (False: matplotlib is missing)."""
    if not have_matplotlib():
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        _draw(ax, panel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

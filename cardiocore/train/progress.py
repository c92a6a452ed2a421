"""Progress reporting for training: a tqdm bar for terminals and a callback for GUIs (Slicer)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tqdm.auto import tqdm

ProgressCallback = Callable[[int, int, Mapping[str, float]], None]


class ProgressReporter:
    """Reports each finished step to a tqdm bar (if ``show_bar``) and to ``callback`` (if given).

    ``callback(step, total, metrics)`` receives the 1-based number of steps done, the total
    number of steps and the step's metrics (floats, averaged over ranks). Only rank 0 should
    create a reporter with a bar or callback; other ranks pass neither.
    """

    def __init__(self, total: int, initial: int, show_bar: bool, callback: ProgressCallback | None) -> None:
        self.total = total
        self.callback = callback
        self.bar = (
            tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True) if show_bar else None
        )

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({key: f"{value:.4g}" for key, value in metrics.items()}, refresh=False)
        if self.callback is not None:
            self.callback(step, self.total, dict(metrics))

    def write(self, message: str) -> None:
        """Print a line without breaking the bar (only where a bar is shown)."""
        if self.bar is not None:
            self.bar.write(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

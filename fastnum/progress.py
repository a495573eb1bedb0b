"""The progress bar of :func:`fastnum.train.train`: tqdm where it redraws, else a line per 10 %.

On a terminal, and in Jupyter (a widget with ipywidgets, else a redrawn text line), the bar is
``tqdm.auto``'s.  In a log file or a pipe, where a redrawn bar would be thousands of ``\\r``
updates, it prints one line per tenth of the run in tqdm's format.
"""

from __future__ import annotations

import sys
import time

from tqdm.std import tqdm as _std_tqdm

__all__ = ["NoProgress", "Progress"]


def _redraws(stream):
    """True where a bar can be redrawn in place: a terminal, or a Jupyter kernel's output."""
    # The test tqdm.autonotebook uses: ipykernel's shell module is loaded only inside a kernel.
    in_jupyter = "ipykernel.zmqshell" in sys.modules
    return in_jupyter or bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Progress of a run of ``total`` iterations of which ``done`` are finished already.

    Parameters
    ----------
    total, done : int
    stream : file, optional
        Where the bar goes; ``sys.stderr`` by default.
    """

    def __init__(self, total, done, stream=None):
        stream = sys.stderr if stream is None else stream
        self.total, self.first = total, done
        self.bar = None
        if _redraws(stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                file=stream,
                unit="it",
                mininterval=0.1,
                dynamic_ncols=True,
                leave=True,
            )
        else:
            self.stream = stream
            self.t0 = time.perf_counter()
            self.next_decile = done * 10 // total + 1

    def update(self, done):
        """Report that ``done`` iterations are finished."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif done * 10 >= self.next_decile * self.total:
            line = _std_tqdm.format_meter(
                done,
                self.total,
                time.perf_counter() - self.t0,
                ascii=True,
                unit="it",
                initial=self.first,
            )
            self.stream.write(line + "\n")
            self.stream.flush()
            self.next_decile = done * 10 // self.total + 1

    def write(self, log, message):
        """Call ``log(message)`` with the bar out of the way (it is redrawn below)."""
        if self.bar is None:
            log(message)
            return
        self.bar.clear()  # the log may go to another stream (stdout) on the same screen
        log(message)
        self.bar.refresh()

    def close(self):
        """End the bar's line."""
        if self.bar is not None:
            self.bar.close()


class NoProgress:
    """Stands in for :class:`Progress` when no bar is wanted."""

    def update(self, done):
        pass

    def write(self, log, message):
        log(message)

    def close(self):
        pass

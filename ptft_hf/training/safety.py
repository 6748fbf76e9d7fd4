"""Stopping safely: SIGINT/SIGTERM save a checkpoint first; a non-finite loss stops the run before
the bad step is saved; a resumed run still reports the whole run's mean training loss."""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import Any, Iterator

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NonFiniteLoss(Exception):
    """Raised by the trainer when a training step's loss (or, at a checkpoint, a weight) is nan or
    inf, before that step is logged, evaluated or saved."""

    def __init__(self, step: int, value: float, what: str = "loss"):
        self.step = step
        self.value = value
        self.what = what
        super().__init__(f"{what} became {value} at step {step}")


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving `checkpoint`."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(f"{signal.Signals(signum).name} at step {step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopOnSignal(TrainerCallback):
    """On SIGINT/SIGTERM during training: finish the current optimiser step, save a checkpoint,
    stop. A second signal acts at once (the previous handlers are back after the first).

    Use `with callback.handling_signals(): trainer.train()`; afterwards `signum` says whether a
    signal came and `stopped_at` at which step the checkpoint was saved.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()
        log.warning("%s received: saving a checkpoint after the current step, then stopping "
                    "(send it again to stop at once)", signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator["StopOnSignal"]:
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread (e.g. a notebook worker): leave signals alone
            self._previous = {}
        try:
            yield self
        finally:
            self._restore()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102 (Trainer hook)
        if self.signum is not None and self.stopped_at is None:
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False
            self.stopped_at = state.global_step
        return control


class TrainLossTally(TrainerCallback, ExportableState):
    """Carries the training-loss bookkeeping through checkpoints, so that a resumed run logs and
    reports what an uninterrupted one would: `loss_sum` (losses already folded into logged
    averages), `pending_loss` and `last_logged_step` (the losses since the last log line, which
    the first log line after resuming averages in). The trainer fills them when it saves and
    hands them back to itself when training begins (`trainer` is set by `PtftTrainer`)."""

    def __init__(self, loss_sum: float = 0.0, steps: int = 0, pending_loss: float = 0.0, last_logged_step: int = 0):
        self.loss_sum = loss_sum
        self.steps = steps
        self.pending_loss = pending_loss
        self.last_logged_step = last_logged_step
        self.carried_sum = 0.0
        self.carried_steps = 0
        self.trainer: Any = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102 (Trainer hook)
        # after the trainer restored this tally from the checkpoint (or made a fresh one)
        self.carried_sum, self.carried_steps = self.loss_sum, self.steps
        if self.trainer is not None and self.steps and state.global_step == self.steps:
            self.trainer._tr_loss += self.pending_loss
            self.trainer._globalstep_last_logged = self.last_logged_step

    def state(self) -> dict:
        return {"args": {"loss_sum": self.loss_sum, "steps": self.steps, "pending_loss": self.pending_loss,
                         "last_logged_step": self.last_logged_step}, "attributes": {}}

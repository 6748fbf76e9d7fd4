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
    the first log line after resuming averages in), `steps` (the step they were taken at).

    Kept through public hooks only: `PtftTrainer.training_step` hands each finite loss to `add`
    (a non-finite one stops the run before it is counted), `PtftTrainer.log` passes each training
    log line through `logged` (which folds the carried losses into the first one after resuming)
    and the run's summary through `whole_run_loss`, and the Trainer saves `state()` with every
    checkpoint (`ExportableState`), so the saved figures are always those of the checkpoint's step."""

    def __init__(self, loss_sum: float = 0.0, steps: int = 0, pending_loss: float = 0.0, last_logged_step: int = 0):
        self.loss_sum = loss_sum
        self.steps = steps
        self.pending_loss = pending_loss  # as saved; `state()` adds this call's unlogged losses
        self.last_logged_step = last_logged_step
        self.carried_sum = 0.0  # from the checkpoint this train() call resumed: the folded losses,
        self.carried_pending = 0.0  # the losses not yet logged there,
        self.carried_steps = 0  # and the step it was saved at (0: a fresh run)
        self._folded = True  # carried_pending is part of a logged average already (or there is none)
        self._since_log: Any = None  # this call's losses since its last log line (a tensor: no sync per step)
        self._window_start = 0  # the step the Trainer's current log average began at (it knows nothing carried)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: D102 (Trainer hook)
        # after the trainer restored this tally from the checkpoint (or made a fresh one)
        resumed = bool(self.steps) and state.global_step == self.steps
        if not resumed:  # a fresh run (or a checkpoint that holds no tally): nothing to carry
            self.loss_sum, self.pending_loss, self.steps = 0.0, 0.0, state.global_step
            self.last_logged_step = state.global_step
        self.carried_sum, self.carried_pending = self.loss_sum, self.pending_loss
        self.carried_steps = self.steps if resumed else 0
        self._folded = not self.carried_pending
        self._since_log = None
        self._window_start = state.global_step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102 (Trainer hook)
        self.steps = state.global_step

    def add(self, loss: Any) -> None:
        """One micro-batch's training loss, as the Trainer adds it to its own running sum."""
        loss = loss.detach().float()  # summed in float32, as the Trainer sums it
        self._since_log = loss if self._since_log is None else self._since_log + loss

    def logged(self, mean: float, step: int) -> float:
        """The Trainer logs `mean`, its average since its previous log line (or since train()
        began): fold it into `loss_sum` and return what an uninterrupted run logs at `step` (the
        first line after resuming also averages the losses carried from the checkpoint)."""
        total = mean * (step - self._window_start)
        if not self._folded:
            total += self.carried_pending
            mean = total / (step - self.last_logged_step)
            self._folded = True
        self.loss_sum += total
        self._since_log = None
        self.last_logged_step = self._window_start = step
        return mean

    def whole_run_loss(self, this_call_mean: float, steps: int) -> float:
        """The Trainer's `train_loss` averages the steps of this train() call; with the losses
        carried from the checkpoint it becomes the mean over the whole run."""
        if not self.carried_steps or not steps:
            return this_call_mean
        return (self.carried_sum + self.carried_pending + this_call_mean * (steps - self.carried_steps)) / steps

    def state(self) -> dict:
        pending = 0.0 if self._folded else self.carried_pending
        if self._since_log is not None:
            pending += float(self._since_log)
        return {"args": {"loss_sum": self.loss_sum, "steps": self.steps, "pending_loss": pending,
                         "last_logged_step": self.last_logged_step}, "attributes": {}}

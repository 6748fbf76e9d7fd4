"""How far a run got: the epochs it covered, how far its training loss moved from where it started
and from a uniform guess, and whether it was still falling when it stopped.

Read from the Trainer's log history (`loss` every `logging_steps`) when a run ends. Two cases get
one warning each, with the fix: a loss that never left the uniform guess (ln of the number of
classes, or of the vocabulary for an LM), and a run that covered less than one epoch while its
loss was still falling (not said of a loss still at the uniform guess: the first warning's fix
names the steps too). The slope over the last 20% of the logged steps is a least-squares line
(`scipy.stats.linregress`); it counts as falling when it is below zero by more than two of its
standard errors (the noise of the loss around the line).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

TAIL = 0.2  # the share of the logged steps whose slope tells whether the loss was still falling
# the loss "never left the uniform guess" when it ends within this share of ln(K) of it (or within 2x its noise)
UNIFORM_MARGIN = 0.05


@dataclass(frozen=True)
class Progress:
    """What the training loss did over a run (losses in nats; slope per 100 optimiser steps)."""

    epochs: float
    first_loss: float | None
    last_loss: float | None  # mean of the last 20% of the logged losses
    uniform_loss: float | None  # ln(classes) for a classifier, ln(vocabulary) for an LM
    slope_per_100_steps: float | None
    slope_stderr: float | None
    noise: float | None  # standard deviation of the tail's losses around their line
    still_falling: bool | None
    learned_nothing: bool
    stopped_early: bool

    def as_metrics(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: epochs, the loss's movement, the tail's slope against its noise."""
        parts = [f"training covered {self.epochs:.2f} epochs"]
        if self.first_loss is not None and self.last_loss is not None:
            parts.append(f"training loss {self.first_loss:.4g} -> {self.last_loss:.4g} ({self.last_loss - self.first_loss:+.4g})")
        if self.uniform_loss is not None and self.last_loss is not None:
            parts.append(f"{self.last_loss - self.uniform_loss:+.4g} from the uniform guess's {self.uniform_loss:.4g}")
        if self.slope_per_100_steps is not None:
            state = "still falling" if self.still_falling else "not falling beyond its noise"
            parts.append(f"slope over the last 20% of logged steps {self.slope_per_100_steps:+.3g} per 100 steps "
                         f"(standard error {self.slope_stderr:.2g}, noise {self.noise:.2g}): {state}")
        return "; ".join(parts)

    def warnings(self, learning_rate: float | None = None) -> list[str]:
        """One line per problem, with the fix."""
        lines = []
        if self.learned_nothing:
            lr = f" (now {learning_rate:g})" if learning_rate is not None else ""
            lines.append(f"the training loss never left the uniform guess: {self.last_loss:.4g} at the end against "
                         f"{self.uniform_loss:.4g} (started at {self.first_loss:.4g}): the model learned nothing; check "
                         f"trainer.learning_rate{lr}, the steps (trainer.max_steps, trainer.num_train_epochs) and the labels "
                         f"(data.label_column)")
        if self.stopped_early:
            lines.append(f"training stopped after {self.epochs:.2f} of an epoch while its loss was still falling "
                         f"({self.slope_per_100_steps:+.3g} per 100 steps, standard error {self.slope_stderr:.2g}): train "
                         f"longer: raise trainer.max_steps, or set trainer.max_steps=-1 and trainer.num_train_epochs")
        return lines


def logged_losses(log_history: Iterable[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(step, training loss) of every logging step (not the eval losses, not the run's mean loss)."""
    return [(int(r["step"]), float(r["loss"])) for r in log_history
            if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]) and "step" in r]


def training_progress(losses: list[tuple[int, float]], epochs: float, uniform_loss: float | None) -> Progress:
    """The run's `Progress` from its logged (step, loss) pairs, the epochs it covered and the
    loss of a uniform guess (None: no such figure)."""
    if not losses:
        return Progress(epochs, None, None, uniform_loss, None, None, None, None, False, False)
    tail = losses[-max(2, math.ceil(TAIL * len(losses))):]
    last = sum(loss for _, loss in tail) / len(tail)
    slope = stderr = noise = falling = None
    if len(tail) >= 3:
        from scipy.stats import linregress

        steps, values = [s for s, _ in tail], [v for _, v in tail]
        fit = linregress(steps, values)
        residuals = [v - (fit.intercept + fit.slope * s) for s, v in tail]
        noise = math.sqrt(sum(r * r for r in residuals) / (len(tail) - 2))
        slope, stderr = 100.0 * fit.slope, 100.0 * fit.stderr
        falling = bool(slope + 2.0 * stderr < 0.0)
    margin = max(UNIFORM_MARGIN * uniform_loss, 2.0 * (noise or 0.0)) if uniform_loss else 0.0
    learned_nothing = uniform_loss is not None and last >= uniform_loss - margin
    # a loss still at the uniform guess gets that warning alone (its fix names the steps too)
    return Progress(epochs, losses[0][1], last, uniform_loss, slope, stderr, noise, falling, learned_nothing,
                    bool(falling) and epochs < 1.0 and not learned_nothing)

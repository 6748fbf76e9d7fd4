"""The private members of transformers and accelerate that ptft_hf still uses: the one list.

Everything else goes through public hooks: the training-loss tally through `training_step`, `log`
and a callback (`safety.TrainLossTally`); the length-grouped order through `get_train_dataloader`;
checkpoint checks, the stream position and the removal of `training_args.bin` through
`save_model`; Hydra's composition errors through Hydra's own `HYDRA_FULL_ERROR` switch (see
`ptft_hf.cli`), so no Hydra private member is left here.

A private member can vanish or change in any minor release, without a deprecation warning. Each
entry below says where it lives, why no public hook serves, and the versions it was checked
with. Code that uses one reaches it through `member(obj, ENTRY)`, so that a search for the entry
finds every use and a missing member fails with a message naming it and this file, instead of an
`AttributeError` in the middle of training; `tests/unit/test_private_api.py` checks every entry
against the installed versions.

Only calls and reads are listed: ptft_hf overrides no private method and writes no private
attribute (either would break silently when renamed: the override is never called, the write
creates a new attribute nobody reads).

Behaviours of public hooks that the code relies on, each covered by a test:
- `Trainer.log` receives the training loss as `loss`, the mean over the optimiser steps since the
  previous such line, or since `train()` began (tests/integration/test_resume.py compares the
  logged losses of a resumed run with those of an uninterrupted one).
- A checkpoint's weights are written by `Trainer.save_model(<output_dir>/checkpoint-<step>)`
  before its `trainer_state.json` (tests/unit/test_safety.py: an inf weight stops the run before
  that checkpoint exists; test_resume.py).
- Hydra, with `HYDRA_FULL_ERROR=1`, raises a composition error to the caller of the `@hydra.main`
  function instead of printing it and exiting with status 1 (tests/unit/test_private_api.py;
  tests/integration/test_cli_errors.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from importlib.metadata import version
from typing import Any

# The versions every entry was checked with (their source read, the test suite run).
TESTED_WITH = {"transformers": "5.25.0", "accelerate": "1.16.0", "hydra-core": "1.3.8"}


class MissingPrivateMember(RuntimeError):
    """An installed library lacks a private member ptft_hf relies on."""


@dataclasses.dataclass(frozen=True)
class PrivateMember:
    """One private member: `owner` (module:Class), `name`, what we do with it (`kind`: "method" we
    call, "attribute" we read, set on instances by the owner's __init__), the keyword parameters our
    calls pass (`parameters`), the `package` it comes from, and `why` no public hook serves."""

    owner: str
    name: str
    kind: str
    why: str
    package: str = "transformers"
    parameters: tuple[str, ...] = ()

    @property
    def owner_class(self) -> type:
        module, _, qualname = self.owner.partition(":")
        return getattr(importlib.import_module(module), qualname)

    @property
    def label(self) -> str:
        return f"{self.owner.partition(':')[2]}.{self.name}"

    def message(self, problem: str) -> str:
        return (f"{self.package} {installed(self.package)} {problem} {self.label} ({self.kind}), which ptft_hf "
                f"uses: {self.why} Checked with {self.package} {TESTED_WITH[self.package]}; see "
                f"ptft_hf/training/private_api.py")

    def problem(self, instance: Any = None) -> str | None:
        """What is wrong with this member in the installed version (None when it is as listed).
        Instance attributes need an `instance` of the owner to be checked."""
        if self.kind == "attribute":
            if instance is None:
                raise ValueError(f"{self.label} is an instance attribute: pass an instance of {self.owner}")
            return None if hasattr(instance, self.name) else self.message("lacks")
        found = getattr(self.owner_class, self.name, None)
        if found is None:
            return self.message("lacks")
        if not callable(found):
            return self.message("no longer has a method")
        accepted = inspect.signature(found).parameters
        missing = [p for p in self.parameters if p not in accepted]
        if missing:
            return self.message(f"has no parameter {', '.join(missing)} in")
        return None


def installed(package: str) -> str:
    return version(package)


def member(obj: Any, entry: PrivateMember) -> Any:
    """`getattr(obj, entry.name)`, failing with a message that names the member, the installed
    version and the version it was checked with."""
    try:
        return getattr(obj, entry.name)
    except AttributeError:
        raise MissingPrivateMember(entry.message("lacks")) from None


TRAINER = "transformers:Trainer"

GET_DATALOADER = PrivateMember(
    TRAINER, "_get_dataloader", "method",
    "`get_train_dataloader` (public, overridden) serves the shuffled length-grouped order "
    "(`sampling.ShuffledLengthGroupedSampler`), but no public hook takes a sampler "
    "(`train_sampling_strategy` names only the stock ones); this helper builds the DataLoader the "
    "stock one would (drops the columns forward() does not take, seeds the workers, prepares it with "
    "accelerate) around the sampler passed as `sampler_fn`.",
    parameters=("dataset", "description", "batch_size", "sampler_fn", "is_training"))

TRAIN_BATCH_SIZE = PrivateMember(
    TRAINER, "_train_batch_size", "attribute",
    "the per-device batch size the Trainer batches with (it differs from "
    "`args.per_device_train_batch_size` under `auto_find_batch_size`); the public "
    "`state.train_batch_size` is set only after the training DataLoader is built, and the sampler "
    "and a stream's position need it before.")

COLLATOR_WITHOUT_UNUSED_COLUMNS = PrivateMember(
    TRAINER, "_get_collator_with_removed_columns", "method",
    "a streamed training set (an IterableDataset read by each rank on its own, so not prepared by "
    "accelerate) is batched with the collator the stock DataLoader would use, which drops the "
    "columns forward() does not take; no public hook returns it.",
    parameters=("data_collator", "description"))

PREPARE_INPUTS = PrivateMember(
    TRAINER, "_prepare_inputs", "method",
    "the token-weighted evaluation loop (`PtftTrainer.evaluate`, public, overridden) moves each batch "
    "to the device as the stock loops do (context parallelism, DeepSpeed dtypes included); the "
    "public `prediction_step` would compute the loss per batch, which is what the loop replaces.")

ACCELERATOR_MODELS = PrivateMember(
    "accelerate:Accelerator", "_models", "attribute",
    "evaluating before training under FSDP or DeepSpeed needs to know whether accelerate has "
    "prepared (wrapped) the model yet; accelerate has no public accessor for that.",
    package="accelerate")

ALL = (GET_DATALOADER, TRAIN_BATCH_SIZE, COLLATOR_WITHOUT_UNUSED_COLUMNS, PREPARE_INPUTS, ACCELERATOR_MODELS)

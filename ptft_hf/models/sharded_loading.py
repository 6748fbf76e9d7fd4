"""FSDP's low-memory loading where every rank reads only its own slices of the checkpoint.

Every rank builds the model on the meta device (parameters only: buffers such as the rotary
frequencies are computed as usual, they are small), marked with the checkpoint it reads from. When
the Trainer's accelerator exists, `fill_shards` has accelerate shard it (`fsdp2_prepare_model`:
the plugin's wrap policy, mixed precision and fp32 master weights, exactly as when training
starts), gives the shards memory (`to_empty`), and torch's distributed checkpoint reads each
rank's slices from the safetensors file(s) into its shards (`dcp.load` with the Hugging Face
reader, converting bf16 to the shards' dtype as it copies). No rank holds the whole model: the
two ranks of a 2-process run together hold one fp32 copy, where accelerate's broadcast from rank 0
(`cpu_ram_efficient_loading` as accelerate does it) has rank 0 keep the whole state dict while the
shards are made.

`checkpoint_mismatch` compares the checkpoint's tensor names and shapes with the model's before
anything is built, so a checkpoint that `from_pretrained` would have to rename, reshape or partly
initialise keeps the ordinary loading (the caller logs why).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.futures import Future

log = logging.getLogger(__name__)

READS_SHARDS_FROM = "_ptft_reads_shards_from"  # set on a meta model: the folder its shards are read from
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def checkpoint_folder(name_or_path: str, revision: str | None = None) -> Path | None:
    """The local folder holding the checkpoint's safetensors weights (a download's snapshot for a
    Hub id, fetched once by rank 0 first: the caller runs under `main_process_first`); None when it
    has none (pickle weights only), which the ordinary loading then handles or refuses."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name_or_path, revision=revision,
                                            allow_patterns=[SINGLE, INDEX, "model-*.safetensors"]))
        except Exception as err:  # noqa: BLE001 - any failure: the ordinary loading reports it as it does today
            log.debug("no safetensors snapshot of %s: %s", name_or_path, err)
            return None
    return folder if (folder / INDEX).is_file() or (folder / SINGLE).is_file() else None


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files `from_pretrained` reads: model.safetensors, else those its index names."""
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
    return [folder / name for name in sorted(set(weight_map.values()))]


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, read from the files' headers (no weights read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in checkpoint_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def build_on_meta(auto_class: Any, config: Any, dtype: torch.dtype, trust_remote_code: bool = False) -> Any:
    """The model of `config` with its parameters on the meta device (no memory, no initialisation)
    and its buffers computed on the CPU (accelerate's `init_empty_weights(include_buffers=False)`)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = auto_class.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()
    return model


def _loaded_keys(model: Any) -> dict[str, tuple[int, ...]]:
    """What `from_pretrained` reads into the model: its state dict less the tied copies (the
    checkpoint holds a tied weight once) and less the non-persistent buffers (never saved)."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items() if name not in tied}


def checkpoint_mismatch(model: Any, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why the checkpoint cannot be read slice by slice into `model` (a name the checkpoint lacks,
    which transformers would rename or initialise; a shape that differs); None when it can."""
    wanted = _loaded_keys(model)
    missing = sorted(set(wanted) - set(shapes))
    if missing:
        return f"the checkpoint lacks {len(missing)} of the model's tensors (first: {missing[0]})"
    reshaped = [name for name, shape in wanted.items() if shapes[name] != shape]
    if reshaped:
        return f"{len(reshaped)} tensors differ in shape from the model's (first: {reshaped[0]})"
    return None


def reads_shards(model: Any) -> Path | None:
    """The checkpoint folder a meta model built by `build_on_meta` is still to read; None otherwise."""
    return getattr(model, READS_SHARDS_FROM, None)


def ranks_agree_on_reading_shards(model: Any) -> None:
    """Every rank of the process group reads its own slices, or none does: a rank that fell back
    (its checkpoint unreadable by slices, e.g. a download that failed there) would wait in
    accelerate's broadcast while the others read, for ever. One line instead, before any of it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, reads_shards(model) is not None)
    if len(set(flags)) > 1:
        from ptft_hf.errors import UserError

        readers = [rank for rank, reads in enumerate(flags) if reads]
        others = [rank for rank, reads in enumerate(flags) if not reads]
        raise UserError.of("trainer.fsdp_config.cpu_ram_efficient_loading",
                           f"ranks {readers} can read their own slices of the checkpoint and ranks {others} cannot "
                           "(each rank's log says why)",
                           "give every rank the same local checkpoint folder, or set "
                           "trainer.fsdp_config.cpu_ram_efficient_loading=false")


def fill_shards(accelerator: Any, model: Any) -> Any:
    """Shard the meta model as accelerate shards it for training, then read each rank's slices of
    the checkpoint into its shards. Returns the FSDP model (the same object), which accelerate's
    `prepare` later takes as it is (an FSDP module is not wrapped again)."""
    import torch.distributed.checkpoint as dcp
    from accelerate.utils.fsdp_utils import fsdp2_apply_ac, fsdp2_prepare_model

    folder = getattr(model, READS_SHARDS_FROM)
    # to_empty below empties the buffers too; kept by module (activation checkpointing renames them)
    buffers = [(module, name, buffer.clone()) for module in model.modules() for name, buffer in module._buffers.items()
               if buffer is not None]
    plugin = accelerator.state.fsdp_plugin
    plugin.set_auto_wrap_policy(model)
    if plugin.activation_checkpointing:  # accelerate's order: checkpointing, then sharding
        model = fsdp2_apply_ac(accelerator, model)
    broadcast, plugin.cpu_ram_efficient_loading = plugin.cpu_ram_efficient_loading, False
    try:  # the broadcast from rank 0 off: no rank has the weights yet, each reads its own below
        model = fsdp2_prepare_model(accelerator, model)
    finally:
        plugin.cpu_ram_efficient_loading = broadcast
    # FSDP's CPU offload keeps the parameters' shards on the CPU; buffers go where the model computes
    offloaded = type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    model.to_empty(device="cpu" if offloaded else accelerator.device)
    with torch.no_grad():
        for module, name, value in buffers:
            module._buffers[name] = value.to(accelerator.device)
    loaded = _loaded_keys(model)
    state_dict = {name: tensor for name, tensor in model.state_dict().items() if name in loaded}
    dcp.load(state_dict, storage_reader=SliceReader(folder))
    delattr(model, READS_SHARDS_FROM)
    return model


class _CheckpointListing(FileSystem):
    """The folder as the reader lists it: only the files `from_pretrained` would read (a folder
    may also hold an older single file beside an index's files, or an adapter)."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def ls(self, path: str | os.PathLike) -> list[str]:
        return list(self.files)


class SliceReader(HuggingFaceStorageReader):
    """torch's Hugging Face reader (each rank copies `get_slice(name)[its slices]` into its shard),
    reading only the checkpoint's own files and opening the file again for each tensor. The stock
    reader keeps a file open while it reads all of a rank's tensors from it: safetensors maps the
    file, and every page read stays in the rank's resident memory until the file closes (half the
    bf16 checkpoint per rank, on top of its fp32 shards). Opened per tensor, at most one tensor's
    slice of the file is resident at a time."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder))
        self.fs = _CheckpointListing([str(path) for path in checkpoint_files(folder)])

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        from safetensors import safe_open

        for item in plan.items:
            with safe_open(filename=self.storage_data[item.storage_index].relative_path, framework="pt") as f:
                self._process_read_request(f, item, planner)
        done: Future = Future()
        done.set_result(None)
        return done

"""Collators of the project's own. Each turns a list of examples into model inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class CausalLMCollator:
    """Stacks packed, equal-length blocks; labels are the inputs (the model shifts them).

    Packed blocks have no padding, so no attention mask is built: every position is real.
    """

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("CausalLMCollator got an empty batch")
        lengths = {len(e["input_ids"]) for e in examples}
        if len(lengths) != 1:
            raise ValueError(
                f"CausalLMCollator expects packed blocks of one length, got lengths {sorted(lengths)}; "
                "pack the data with ptft_hf.data.packing.pack_blocks first"
            )
        input_ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)
        return {"input_ids": input_ids, "labels": input_ids.clone()}

"""A causal LM's logits for a batch of short sequences, each shared prefix computed once.

lm-eval sorts a task's requests by length and then by their tokens, so the rows of one of its
batches are neighbours in lexical order: BLiMP's minimal pairs and the sentences of one template
share their first words. Here consecutive rows are gathered into prefix trees (tries) of at most
`max_nodes` tokens; a tree's tokens go through the model as one sequence, each token at its depth
(`position_ids`) and attending to its ancestors only (a 4D attention mask), and every row's logits
are then read back from its path through the tree. In exact arithmetic these are the logits of the
plain forward pass: a causal model's output at a position depends only on the tokens up to it.

On the seed_cases general model this computes 24% fewer positions of a BLiMP batch (at most 96
tokens a tree: longer trees cost more in attention than they save). It is used only where
`prefix_sharing_agrees` has found the model's logits equal to its plain forward pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
MAX_TREE_TOKENS = 96  # tokens a tree: measured 64 and 128 as good, 256 slower than the plain pass
MIN_SAVING = 0.1  # below a tenth fewer positions, the plain forward pass (the trees' own costs)


@dataclass
class PrefixTree:
    """Rows that share prefixes, as a trie: node i holds `tokens[i]` at position `depths[i]` after its
    parent `parents[i]` (-1 for a root); `paths[k]` is the node of each position of the k-th row."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)
    children: dict = field(default_factory=dict, repr=False)  # token -> (node, its children), from the roots

    def new_nodes(self, row: list[int]) -> int:
        """How many nodes `row` would add."""
        level, depth = self.children, 0
        while depth < len(row) and row[depth] in level:
            level = level[row[depth]][1]
            depth += 1
        return len(row) - depth

    def add(self, index: int, row: list[int]) -> None:
        level, parent, path = self.children, -1, []
        for depth, token in enumerate(row):
            entry = level.get(token)
            if entry is None:
                entry = level[token] = (len(self.tokens), {})
                self.tokens.append(token)
                self.parents.append(parent)
                self.depths.append(depth)
            parent, level = entry
            path.append(parent)
        self.rows.append(index)
        self.paths.append(path)


def prefix_trees(rows: list[list[int]], max_nodes: int = MAX_TREE_TOKENS) -> list[PrefixTree]:
    """Consecutive `rows` gathered into tries of at most `max_nodes` nodes (a row longer than that
    gets a tree of its own)."""
    trees: list[PrefixTree] = []
    for index, row in enumerate(rows):
        if not trees or (trees[-1].rows and len(trees[-1].tokens) + trees[-1].new_nodes(row) > max_nodes):
            trees.append(PrefixTree())
        trees[-1].add(index, row)
    return trees


def tree_inputs(trees: list[PrefixTree], mask_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The model's inputs for `trees`, padded to the largest: input_ids, position_ids and the 4D
    attention mask (each node sees its ancestors and itself; a padding node only itself), boolean
    (True: attend) or, with `mask_dtype`, additive (0 or the dtype's minimum) as eager attention
    takes it."""
    width = max(len(tree.tokens) for tree in trees)
    ids = torch.zeros(len(trees), width, dtype=torch.long)
    positions = torch.zeros(len(trees), width, dtype=torch.long)
    sees = np.zeros((len(trees), width, width), dtype=bool)  # numpy: a row copy per node, without torch's per-op cost
    sees[:, np.arange(width), np.arange(width)] = True
    for t, tree in enumerate(trees):
        n = len(tree.tokens)
        ids[t, :n] = torch.tensor(tree.tokens)
        positions[t, :n] = torch.tensor(tree.depths)
        visible = sees[t]
        for node, parent in enumerate(tree.parents):
            if parent >= 0:
                visible[node] |= visible[parent]
    mask = torch.from_numpy(sees)[:, None]
    if mask_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=mask_dtype).masked_fill_(~mask, torch.finfo(mask_dtype).min)
    return {"input_ids": ids, "position_ids": positions, "attention_mask": mask}


def shared_prefix_logits(model: Any, input_ids: torch.Tensor, max_nodes: int = MAX_TREE_TOKENS) -> torch.Tensor | None:
    """`model(input_ids).logits` computed over prefix trees, or None where the trees would save
    less than MIN_SAVING of the positions (the caller runs the plain pass)."""
    rows = input_ids.tolist()
    trees = prefix_trees(rows, max_nodes)
    width = max(len(tree.tokens) for tree in trees)
    if len(trees) * width > (1 - MIN_SAVING) * input_ids.numel():
        return None
    eager = getattr(model.config, "_attn_implementation", None) == "eager"
    inputs = tree_inputs(trees, model.dtype if eager else None)
    logits = model(**{k: v.to(input_ids.device) for k, v in inputs.items()}).logits
    where: list[list[int]] = [[]] * len(rows)  # each row's positions in the flattened trees
    for t, tree in enumerate(trees):
        for row, path in zip(tree.rows, tree.paths):
            where[row] = [node + t * width for node in path]
    index = torch.tensor(where, device=logits.device).view(-1)
    return logits.reshape(-1, logits.shape[-1]).index_select(0, index).view(*input_ids.shape, -1)


def prefix_sharing_agrees(model: Any, vocab_size: int, atol: float | None = None) -> bool:
    """Whether the model's logits over prefix trees equal its plain forward pass on a probe batch
    (rows sharing prefixes, with lm-eval's right padding), to a tolerance for the model's dtype. A
    model that ignores `position_ids` or a 4D mask, or fails with them, does not agree."""
    generator = torch.Generator().manual_seed(0)
    stems = torch.randint(1, vocab_size, (3, 6), generator=generator).tolist()
    rows = [stem + torch.randint(1, vocab_size, (k,), generator=generator).tolist() + [0] * (3 - k)
            for stem in stems for k in (1, 2, 3, 3)]
    probe = torch.tensor(rows, device=next(model.parameters()).device)
    exact = model.dtype == torch.float32
    tolerance = atol if atol is not None else (1e-4 if exact else 0.1)
    try:
        with torch.no_grad():
            plain = model(probe).logits.float()
            shared = shared_prefix_logits(model, probe, max_nodes=24)
    except Exception as err:  # noqa: BLE001 - any failure means the plain pass
        log.info("prefix sharing is off for this model: %s", err)
        return False
    # relative too in half precision: a logit's rounding step grows with it (0.25 from 32 in bfloat16)
    return shared is not None and bool(torch.allclose(shared.float(), plain, atol=tolerance, rtol=0 if exact else 2e-2))

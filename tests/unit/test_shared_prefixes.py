"""BLiMP's CPU kernels: the prefix trees of a batch hold exactly the rows' shared prefixes, their
logits equal the plain forward pass, and the short-sentence kernels compute the model's functions."""

from __future__ import annotations

import pytest
import torch

from ptft_hf.evaluation.shared_prefixes import prefix_sharing_agrees, prefix_trees, shared_prefix_logits, tree_inputs
from ptft_hf.evaluation.short_sentences import LinearTanhGELU, use_short_sentence_kernels

ROWS = [[5, 1, 2], [5, 1, 3], [5, 4, 0], [6, 1, 2]]


def _gpt2(attn: str = "sdpa"):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_layer=2, n_head=2, n_embd=32, n_positions=64, attn_implementation=attn)
    return GPT2LMHeadModel(config).eval()


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _batch() -> torch.Tensor:
    """Rows as lm-eval batches them: sorted, right-padded with 0, pairs that share their first tokens."""
    torch.manual_seed(1)
    stems = torch.randint(1, 50, (4, 5)).tolist()
    rows = [stem + tail for stem in stems for tail in ([7, 8, 9], [7, 8, 3], [11, 0, 0])]
    return torch.tensor(rows)


def test_consecutive_rows_share_their_prefixes_in_tries_of_bounded_size():
    first, second = prefix_trees(ROWS, max_nodes=6)
    assert first.tokens == [5, 1, 2, 3, 4, 0] and first.parents == [-1, 0, 1, 1, 0, 4]
    assert first.depths == [0, 1, 2, 2, 1, 2]
    assert first.rows == [0, 1, 2] and first.paths == [[0, 1, 2], [0, 1, 3], [0, 4, 5]]
    assert second.tokens == [6, 1, 2] and second.rows == [3] and second.paths == [[0, 1, 2]]  # 6 + 3 nodes > 6
    assert [len(t.tokens) for t in prefix_trees(ROWS, max_nodes=100)] == [9]
    assert [t.rows for t in prefix_trees([[1, 2, 3, 4]], max_nodes=2)] == [[0]]  # a longer row gets a tree of its own


def test_a_node_attends_to_its_ancestors_and_itself_and_padding_only_to_itself():
    trees = prefix_trees(ROWS, max_nodes=6)
    inputs = tree_inputs(trees, mask_dtype=None)
    assert inputs["input_ids"].tolist() == [[5, 1, 2, 3, 4, 0], [6, 1, 2, 0, 0, 0]]
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 2, 1, 2], [0, 1, 2, 0, 0, 0]]
    sees = inputs["attention_mask"][:, 0].int().tolist()
    assert sees[0] == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                       [1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]]
    assert sees[1][3:] == [[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]
    additive = tree_inputs(trees, mask_dtype=torch.bfloat16)["attention_mask"]
    assert additive.dtype == torch.bfloat16
    assert set(additive.unique().tolist()) == {0.0, torch.finfo(torch.bfloat16).min}
    assert torch.equal(additive == 0, inputs["attention_mask"])


@pytest.mark.parametrize("build", [lambda: _gpt2("sdpa"), lambda: _gpt2("eager"), _llama], ids=["gpt2-sdpa", "gpt2-eager", "llama"])
def test_logits_over_prefix_trees_equal_the_plain_forward_pass(build):
    model, batch = build(), _batch()
    with torch.no_grad():
        plain = model(batch).logits
        shared = shared_prefix_logits(model, batch, max_nodes=24)
    assert shared is not None and shared.shape == plain.shape
    assert torch.allclose(shared, plain, atol=1e-5, rtol=0)
    assert prefix_sharing_agrees(model, vocab_size=50)


def test_rows_that_share_nothing_take_the_plain_pass():
    rows = torch.tensor([[i, i + 1, i + 2] for i in range(1, 9)])  # every row its own root
    assert shared_prefix_logits(_gpt2(), rows) is None


def test_short_sentence_kernels_compute_the_models_functions():
    model, batch = _gpt2("sdpa"), _batch()
    with torch.no_grad():
        before = model(batch).logits
        switched = use_short_sentence_kernels(model)
        after = model(batch).logits
    assert switched == ["eager attention", "fused product and tanh GELU in 2 MLPs"]
    assert model.config._attn_implementation == "eager"
    assert all(type(block.mlp.c_fc) is LinearTanhGELU and type(block.mlp.act) is torch.nn.Identity
               for block in model.transformer.h)
    assert torch.allclose(after, before, atol=1e-4, rtol=0)
    llama = _llama()
    assert use_short_sentence_kernels(llama) == ["eager attention"]  # no GPT-2 MLP to fuse



def test_the_probe_refuses_trees_whose_logits_differ_from_the_plain_pass(monkeypatch):
    """A mask that let every node see every other (as if the model ignored it) changes the logits:
    the probe says no, and the share runs the plain pass."""
    from ptft_hf.evaluation import shared_prefixes

    def sees_everything(trees, mask_dtype):
        inputs = tree_inputs(trees, None)
        inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])
        return inputs

    monkeypatch.setattr(shared_prefixes, "tree_inputs", sees_everything)
    assert not prefix_sharing_agrees(_gpt2("sdpa"), vocab_size=50)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_short_sentence_kernels_keep_a_half_precision_model_running(dtype):
    """oneDNN refuses some dtypes on some CPUs (float16 without AVX-512 FP16): the MLP is switched only
    where the fused kernel runs for the weights' dtype and matches; either way the model still runs."""
    model, batch = _gpt2("sdpa").to(dtype), _batch()
    with torch.no_grad():
        before = model(batch).logits.float()
        switched = use_short_sentence_kernels(model)
        after = model(batch).logits.float()
    assert switched[0] == "eager attention"
    fused = type(model.transformer.h[0].mlp.c_fc) is LinearTanhGELU
    assert switched[1:] == (["fused product and tanh GELU in 2 MLPs"] if fused else [])
    assert torch.allclose(after, before, atol=0.1, rtol=2e-2)

"""Chat SFT with the families' own templates, on offline twins (`ptft_hf.models.twins`: the real
Qwen2 and Llama classes at tiny sizes, tokenizers with Qwen2.5's ChatML and Llama 3's template).
A learnable toy task ("What is a plus b?" -> the sum): the model learns to end its turn with the
family's end-of-turn token, which becomes a stop token of the saved generation config, so that
generation stops there instead of running on to max_new_tokens; SFT counts the real tokens it
trained on, and measures forgetting on general text. LoRA-SFT (the final norm trained in full), then
merged: the merged folder keeps the end-of-turn eos ids and the chat template, and its greedy answers
equal the adapter model's and stop at the end of the turn, through `open_run` and through
`transformers.pipeline`. In-process: the recipe is under test (the CLI layer is covered elsewhere)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, GenerationConfig, pipeline

from tests.conftest import shared_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUMS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]}
        for a in range(5) for b in range(5)]


@pytest.mark.parametrize("family, end_of_turn", [("qwen2", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_chat_sft_learns_to_end_its_turn_and_generation_stops_there(compose_cfg, tmp_path, family, end_of_turn):
    from ptft_hf.api import open_run
    from ptft_hf.hub.merge import merge_adapter
    from ptft_hf.config.schema import DataConfig
    from ptft_hf.data.chat import IGNORE_INDEX, encode_conversation
    from ptft_hf.models.twins import build_twin
    from ptft_hf.recipe import run

    wiki = shared_data("wikitext-2", "valid.txt")
    texts = [line for line in wiki.read_text().splitlines() if line.strip()][:3000]
    twin = build_twin(family, tmp_path / "twin", texts + [m["content"] for r in SUMS for m in r["messages"]])
    data = tmp_path / "sums.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in SUMS * 2) + "\n")  # 50 conversations: 5 batches of 10
    # (validation: the eval file, so that no conversation is carved off the 50 and the counts below are exact)
    evals = tmp_path / "eval.jsonl"
    evals.write_text("\n".join(json.dumps(r) for r in SUMS) + "\n")
    metrics = run(compose_cfg(
        "objective=sft", "model=pretrained", f"model.name_or_path={twin}", "data=text_files", f"data.path={data}",
        f"data.eval_path={evals}", f"data.validation_path={evals}",  # no validation carve: all 50 train, counts exact
        "objective.exact_match=true", "objective.max_new_tokens=12", "objective.max_length=128",
        "strategy=lora", "strategy.gradient_checkpointing=false", "strategy.lora.modules_to_save=[norm]",
        "trainer.per_device_train_batch_size=10", "trainer.max_steps=60", "trainer.learning_rate=3e-2",
        "trainer.warmup_steps=0", "trainer.eval_steps=60", "trainer.save_steps=60", "samples.prompts=[What is 1 plus 2?]"),
        tmp_path / "run", references={"wikitext": DataConfig(name="wikitext", path=str(wiki), max_eval_samples=40)})

    tokenizer = AutoTokenizer.from_pretrained(twin)
    eot = tokenizer.convert_tokens_to_ids(end_of_turn)
    assert metrics["end_of_turn"] == end_of_turn and metrics["stop_token_ids"] == [eot, tokenizer.eos_token_id]
    assert GenerationConfig.from_pretrained(tmp_path / "run" / "model").eos_token_id == [eot, tokenizer.eos_token_id]
    # labels: the sum and the end-of-turn token, nothing else
    encoded = [encode_conversation(r["messages"], tokenizer, None, 128, end_of_turn=end_of_turn) for r in SUMS]
    for row, e in zip(SUMS, encoded):
        labelled = [t for t, label in zip(e.input_ids, e.labels) if label != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == row["messages"][1]["content"] + end_of_turn
    assert metrics["data_train"]["labelled_tokens"] == 2 * sum(sum(x != IGNORE_INDEX for x in e.labels) for e in encoded)
    # 60 steps of 10 = 12 passes over the 50 conversations, no token of padding counted as trained
    real = 2 * sum(len(e.input_ids) for e in encoded)
    assert metrics["train_tokens"] == metrics["padding"]["tokens"] == 12 * real
    assert metrics["padding"]["labelled_tokens"] == 12 * metrics["data_train"]["labelled_tokens"]

    # forgetting, as a pipeline's SFT stage measures it on its base's data: general text before and after
    assert 1 < metrics["eval_wikitext_perplexity"] != metrics["eval_wikitext_perplexity_before"] > 1

    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 25
    stopped = sum(p["stopped_at_eos"] for p in predictions) / 25
    assert metrics["eval_stopped_at_eos"] == stopped >= 0.95, predictions
    assert all(end_of_turn not in p["answer"] for p in predictions)
    # the sample, under the samples' repetition penalty (which spares the stop tokens the prompt holds), stops too
    assert metrics["sample"]["completion"].strip().isdigit(), metrics["sample"]
    # the Python API's generate stops at the end of the turn too (the saved generation config)
    reply = open_run(tmp_path / "run").generate(tokenizer.apply_chat_template(SUMS[7]["messages"][:1], tokenize=False,
                                                                        add_generation_prompt=True), max_new_tokens=12)
    assert reply.count(end_of_turn) == 0

    # merged: the adapter folder's stop ids and chat template kept, the same greedy answers, stopped at the end of turn
    merged = merge_adapter(tmp_path / "run", atol=1e-4)
    assert GenerationConfig.from_pretrained(merged.output_dir).eos_token_id == merged.eos_token_id == [eot, tokenizer.eos_token_id]
    merged_tokenizer = AutoTokenizer.from_pretrained(merged.output_dir)
    assert merged_tokenizer.chat_template == tokenizer.chat_template
    assert merged_tokenizer.all_special_tokens == tokenizer.all_special_tokens and end_of_turn in merged_tokenizer.all_special_tokens
    assert all(answer.endswith(end_of_turn) for answer in merged.answers), merged.answers
    adapter_run, merged_run = open_run(tmp_path / "run", device="cpu"), open_run(tmp_path / "run", device="cpu", merged=True)
    chats = [{"role": "user", "content": f"What is {a} plus {b}?"} for a, b in ((1, 2), (4, 3), (0, 0))]
    replies = [adapter_run.generate(messages=[chat], max_new_tokens=12) for chat in chats]
    assert [merged_run.generate(messages=[chat], max_new_tokens=12) for chat in chats] == replies
    merged_model, _ = merged_run.load()
    for chat, reply in zip(chats, replies):  # the turn ended: the end-of-turn token right after the reply
        ids = tokenizer(merged_run.chat_prompt([chat]), return_tensors="pt", add_special_tokens=False)
        out = merged_model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0]
        assert out[-1] == eot and tokenizer.decode(out[ids["input_ids"].shape[1]:-1]) == reply
    # transformers.pipeline: the merged folder as it is; the adapter folder loads its base's generation
    # config (transformers reads only the base's), so its own is passed
    generator = pipeline("text-generation", model=str(merged.output_dir), device="cpu")
    assert [generator([chat], max_new_tokens=12, do_sample=False)[0]["generated_text"][-1]["content"] for chat in chats] == replies
    generator = pipeline("text-generation", model=str(tmp_path / "run" / "model"), device="cpu")
    stops = GenerationConfig.from_pretrained(tmp_path / "run" / "model")
    assert [generator([chat], max_new_tokens=12, do_sample=False, generation_config=stops)[0]["generated_text"][-1]["content"]
            for chat in chats] == replies

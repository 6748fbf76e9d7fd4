"""Dataclass schemas of the project's own config groups.

Hydra merges every YAML option into these typed nodes, so a misspelt key in any group fails at
compose time. `trainer` mirrors `transformers.TrainingArguments`: one untyped field per argument of
the installed version, null unless set, so every argument can be overridden without `+` and its
value passes through untouched (TrainingArguments itself checks the values).
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from ptft_hf.config.trainer_fields import training_argument_names
from ptft_hf.config.engines import RESOLVER, engine_file


@dataclass
class TokenizerConfig:
    name_or_path: Optional[str] = None  # defaults to the model's name_or_path
    train: bool = False  # train a new tokenizer on the run's training texts
    kind: str = "byte_bpe"  # byte_bpe (GPT-2 style) or wordpiece (BERT style)
    vocab_size: int = 8000
    min_frequency: int = 2
    max_documents: Optional[int] = 100_000  # a seeded sample of at most N documents trains it; null: all
    chat_template: Optional[str] = None  # chatml or llama3: that family's chat template and special tokens
    # transformers' add_bos_token / add_eos_token: the tokenizer puts its BOS before / EOS after every
    # text it encodes (saved with the model, so inference does the same); null keeps the tokenizer's own
    add_bos_token: Optional[bool] = None
    add_eos_token: Optional[bool] = None


@dataclass
class ModelConfig:
    name: str = "model"
    name_or_path: Optional[str] = None  # Hub id or local folder; null builds from `config`
    architecture: Optional[str] = None  # model_type used to build from scratch, e.g. gpt2
    config: Dict[str, Any] = field(default_factory=dict)  # sizes / config overrides
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    random_init: bool = False  # use name_or_path's architecture and tokenizer, but fresh weights (a control)
    revision: Optional[str] = None
    trust_remote_code: bool = False  # run Python code shipped with a Hub model only when set explicitly
    allow_pickle: bool = False  # load only safetensors weights; true also accepts pytorch_model.bin (pickle)
    # null or auto: trained weights float32, a frozen base as stored under bf16 training (training/dtypes.py);
    # or float32, bfloat16, float16 for every weight
    dtype: Optional[str] = None
    attn_implementation: Optional[str] = None


@dataclass
class DataConfig:
    name: str = "data"
    path: Optional[str] = None  # local file, glob or folder (wins over hub_id)
    eval_path: Optional[str] = None  # local test file, scored once after training; else eval_split or a carved fraction
    # the validation split: what the Trainer evaluates during training (load_best_model_at_end, early
    # stopping and a pipeline's choices read only it). A local file, else the Hub data set's split,
    # else validation_fraction of the training rows left after the test carve (seeded; stratified by label)
    validation_path: Optional[str] = None
    validation_split: Optional[str] = None
    format: Optional[str] = None  # text, json, csv or parquet; inferred from the extension
    hub_id: Optional[str] = None  # datasets.load_dataset id
    hub_config: Optional[str] = None
    builtin: Optional[str] = None  # name of a builtin offline corpus
    train_split: str = "train"
    eval_split: Optional[str] = None  # the Hub data set's test split
    text_column: str = "text"
    label_column: Optional[str] = None  # classification: the column holding the label
    prompt_column: str = "prompt"  # sft: prompt/response pairs ...
    response_column: str = "response"
    messages_column: str = "messages"  # ... or a list of {role, content} (used when present)
    # sft: messages, alpaca, sharegpt or prompt_response; null sniffs it from the first records (and logs it)
    chat_format: Optional[str] = None
    # sft: canonical name -> your column/key, e.g. {instruction: question, output: answer, from: speaker}
    fields: Dict[str, str] = field(default_factory=dict)
    sample_by: str = "line"  # text files: line, paragraph or document
    eval_fraction: float = 0.05  # test split carved off the training data when no eval data is given
    validation_fraction: float = 0.05  # validation carved off the (remaining) training data when none is given
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None  # caps the test split and the validation split alike
    streaming: bool = False  # clm: read the training data as a stream, packed on the fly (needs trainer.max_steps)
    stream_eval_documents: int = 200  # streaming without test/validation data: the stream's first N documents test, the next N validate
    # more training text mixed in: a list of {path, format, text_column} (e.g. a domain corpus)
    extra_train: List[Dict[str, Any]] = field(default_factory=list)
    # clm pipeline stages: this share of the training tokens comes from the base stage's own
    # training data (replay, against forgetting); 0 mixes in nothing
    replay: float = 0.0


PLAIN_CHAT_TEMPLATE: Dict[str, str] = {
    "system": "### System:\n{content}\n",
    "user": "### User:\n{content}\n",
    "assistant": "### Assistant:\n{content}{eos}\n",
    "generation_prompt": "### Assistant:\n",
}


@dataclass
class ObjectiveConfig:
    name: str = "clm"  # clm, mlm, classification or sft
    block_size: int = 128  # tokens per packed block (clm, mlm)
    add_eos: bool = True  # put EOS ([SEP] for BERT) after every document before packing
    num_proc: Optional[int] = None  # datasets.map workers
    # the CPU trainer's default learning rate for this objective (trainer.learning_rate, set, wins)
    learning_rate: float = 1.0e-3
    # the trainer's default trainer.max_steps for this objective; None: the trainer group's (300 on CPU),
    # classification -1: whole epochs (trainer.num_train_epochs). trainer.max_steps, set, wins
    max_steps: Optional[int] = None
    mlm_probability: float = 0.15  # mlm: share of tokens (or words) to predict
    whole_word_mask: bool = False  # mlm: mask all tokens of a chosen word together
    eval_mask_seed: int = 1234  # mlm: eval masks depend only on this seed and the text
    chunked_loss: bool = True  # clm/sft: loss from hidden states a chunk at a time, no batch of logits kept
    predict_masked_only: bool = True  # mlm: vocabulary projection only at masked positions (faster)
    line_by_line: bool = False  # mlm: one document per row, padded per batch (run_mlm.py's --line_by_line)
    max_length: int = 128  # classification: longer texts are truncated (and counted)
    group_by_length: bool = True  # classification: batches of similar length, little padding
    length_megabatch: Optional[int] = 200  # length grouping sorts within N batches, then shuffles them; null: transformers'
    metrics: List[str] = field(default_factory=lambda: ["accuracy", "f1"])  # classification: evaluate ids
    f1_average: str = "macro"
    rdrop_alpha: float = 0.0  # classification: R-Drop, two dropout samples per batch, KL weight alpha (0: off)
    # sft: chat formatting, loss masking, batching, generation-based evaluation
    template: Dict[str, str] = field(default_factory=lambda: dict(PLAIN_CHAT_TEMPLATE))
    use_tokenizer_template: bool = True  # the tokenizer's chat template when it has one
    train_on_prompt: bool = False  # true: loss on every token, not only the assistant's
    packing: bool = False  # padding-free packing (position_ids restart per example)
    exact_match: bool = False  # generate an answer for every eval example and compare
    max_new_tokens: int = 16  # exact_match generation budget
    # the settings of an objective registered outside ptft_hf: checked against that objective's own
    # `options` dataclass (see "Adding an objective" in the README); empty for the built-in ones
    options: Dict[str, Any] = field(default_factory=dict)


LORA_DEFAULTS: Dict[str, Any] = {
    "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "auto", "bias": "none", "modules_to_save": None,
}


@dataclass
class StrategyConfig:
    name: str = "full"  # full, lora, dora or qlora
    gradient_checkpointing: bool = False
    # peft.LoraConfig fields, passed through (used by lora, dora, qlora; ignored by full)
    lora: Dict[str, Any] = field(default_factory=lambda: dict(LORA_DEFAULTS))
    quantization: Optional[Dict[str, Any]] = None  # transformers.BitsAndBytesConfig fields


@dataclass
class SamplesConfig:
    prompts: List[str] = field(default_factory=list)  # continued at every evaluation
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.3  # tiny models loop without it


@dataclass
class StageConfig:
    """One stage of a pipeline: group options plus overrides, composed like a run of its own."""

    model: Optional[str] = None  # group options for this stage (null: config.yaml's default)
    data: Optional[str] = None
    objective: Optional[str] = None
    strategy: Optional[str] = None
    trainer: Optional[str] = None
    init_from: Optional[str] = None  # an earlier stage whose model/ this stage starts from
    overrides: List[str] = field(default_factory=list)  # Hydra overrides set by the preset
    extra: List[str] = field(default_factory=list)  # your own overrides, applied last


@dataclass
class HubConfig:
    """Publishing to the Hugging Face Hub at the end of a run (or later with `ptft-hf-push`).

    The token is never part of the config: huggingface_hub resolves it from HF_TOKEN or the login.
    """

    push: bool = False  # upload after training (main process only)
    repo_id: Optional[str] = None  # user/name (or org/name) on the Hub
    private: bool = True  # new repos are private unless set to false
    dry_run: bool = False  # stage and reload-check the folder, upload nothing
    merged: bool = False  # adapters: publish the adapter merged into its base instead
    commit_message: Optional[str] = None  # null: a message naming the run
    revision: Optional[str] = None  # branch to push to (created if absent); null: main
    dir: Optional[str] = None  # staging folder; null: <run folder>/hub
    atol: float = 1e-4  # largest logit difference the reload check allows


# null means "TrainingArguments' own default"; only the keys that are set reach TrainingArguments.
TrainerConfig = make_dataclass(
    "TrainerConfig", [(name, Any, field(default=None)) for name in training_argument_names()]
)


def set_trainer_fields(trainer: Any) -> Dict[str, Any]:
    """The trainer keys a config actually sets (the rest keep TrainingArguments' defaults)."""
    return {k: v for k, v in dict(trainer).items() if v is not None}


@dataclass
class DistributedConfig:
    """Which engine the `distributed` presets (conf/distributed/) configured; they set the trainer's
    fsdp/fsdp_config/deepspeed fields. The launcher (torchrun, accelerate launch) sets the processes."""

    name: str = "none"  # none, ddp, fsdp, fsdp_qlora, deepspeed_zero2 or deepspeed_zero3


@dataclass
class EvalConfig:
    """lm-evaluation-harness after training (`ptft-hf-eval` does the same for a finished folder):
    eval.json beside each model. Empty `tasks`: no evaluation (and left out of the fingerprint)."""

    tasks: List[str] = field(default_factory=list)  # blimp, banking77, chemprot, wikitext2, legal, blimp_<paradigm>
    num_fewshot: Optional[int] = None  # examples from the task's training split (multiple-choice tasks only)
    limit: Optional[int] = None  # score N documents of each task (banking77/chemprot: a seeded sample); null: all
    batch_size: int = 64
    data_root: Optional[str] = None  # the shared data folder; null: $PTFT_HF_SHARED_DATA or ../shared/data
    dtype: str = "float32"  # float32 or bfloat16


@dataclass
class MatrixConfig:
    """A pipeline's evaluation matrix, scored after every stage finished: each node (the random-
    initialised model of the first stage's architecture, every stage, the controls) on the general
    benchmark (`tasks`) and on every stage's own task (from its data), plus zero- and k-shot controls
    (each specialist's starting model on the specialist's task). Writes `eval_matrix.json` and puts a
    table and a heatmap at the top of the pipeline's report.md. Left out of every stage's fingerprint."""

    enabled: bool = False
    tasks: List[str] = field(default_factory=lambda: ["blimp"])  # the general benchmark, scored for every node
    # per task: N documents (a seeded sample of banking77/chemprot; BLiMP: N pairs per paradigm) in every cell but the general model's
    # general benchmark, which is always scored in full; a task left out: all documents
    limit: Dict[str, int] = field(default_factory=dict)
    fewshot: Optional[int] = None  # k of the k-shot controls; null: as many examples as the model's context holds
    fewshot_limit: Dict[str, int] = field(default_factory=dict)  # per task: documents of the k-shot controls (null: `limit`'s)
    batch_size: int = 256
    data_root: Optional[str] = None  # the shared data folder; null: $PTFT_HF_SHARED_DATA or ../shared/data
    dtype: str = "auto"  # auto (bfloat16 where the CPU/GPU runs it fast, else float32), float32 or bfloat16


@dataclass
class TrackingConfig:
    """The experiment store every finished run and pipeline stage is logged to (conf/tracking/):
    the project is the pipeline or the sweep, the run is the stage or the job. Left out of the
    fingerprint: tracking a run never makes it train again."""

    backend: str = "auto"  # auto (trackio when installed), trackio, mlflow, wandb or none
    dir: str = "outputs/tracking"  # the store: TRACKIO_DIR, MLflow's SQLite file, W&B's offline runs
    project: Optional[str] = None  # null: the pipeline's or sweep's folder (lone runs: "runs")


@dataclass
class PtftConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    trainer: Any = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    matrix: MatrixConfig = field(default_factory=MatrixConfig)  # pipelines: the evaluation matrix after the stages
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # the experiment store (conf/tracking/)
    stages: Dict[str, StageConfig] = field(default_factory=dict)  # non-empty: run as a pipeline
    seed: int = 42
    overwrite: bool = False  # allow writing into a folder that holds a finished run
    verbose: bool = False  # show tracebacks for user errors


SCHEMA_NAME = "ptft_schema"
OR_RESOLVER = "ptft_hf_or"  # ${ptft_hf_or:${objective.max_steps},300}: the first value that is not null


def first_set(*values: Any) -> Any:
    """The first of `values` that is not None (the resolver behind `${ptft_hf_or:a,b}`)."""
    return next((v for v in values if v is not None), None)



def register_schemas() -> None:
    """Make the schema known to Hydra (config.yaml lists it first in its defaults) and the resolver
    the DeepSpeed presets name their shipped JSON with."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=PtftConfig)
    OmegaConf.register_new_resolver(RESOLVER, engine_file, replace=True)
    OmegaConf.register_new_resolver(OR_RESOLVER, first_set, replace=True)


register_schemas()

"""Load a tokenizer and a model: from the Hub or a local folder through `from_pretrained`, or
built from a config (sizes in YAML) with a tokenizer trained on the run's data."""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ptft_hf.config.schema import ModelConfig, TokenizerConfig
from ptft_hf.errors import UserError
from ptft_hf.models.chat_templates import apply_chat_template_preset
from ptft_hf.models.tokenizers import TOKENIZER_TRAINERS

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _hub_error(field: str, name: str, err: Exception) -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError.of(
        field, f"could not load '{name}' ({first})",
        "give a local folder, or a Hub id while the Hub is reachable (HF_HUB_OFFLINE=1 means cache only)",
    )


def torch_dtype(name: str | None) -> Any:
    """`model.dtype` as torch knows it: float32, bfloat16, float16, or "auto"; null is float32."""
    return _DTYPES[name] if name else torch.float32


def pickle_refused(name: str, err: Exception) -> UserError | None:
    """The error for a checkpoint that has only pickle weights (`pytorch_model.bin`), which
    `torch.load` would unpickle (pickles can run code); None when `err` is about something else."""
    if "safetensors" not in str(err):
        return None
    return UserError.of(
        "model.allow_pickle", f"'{name}' has no safetensors weights, only pickle checkpoints (e.g. pytorch_model.bin), "
        "which can run code when loaded", "convert them to safetensors, or set model.allow_pickle=true if you trust the source",
    )


def load_tokenizer(cfg: ModelConfig, train_texts: Iterable[str] | None = None, max_length: int | None = None) -> Any:
    """The run's tokenizer: trained on `train_texts` when `model.tokenizer.train`, else loaded."""
    tcfg = cfg.tokenizer
    if tcfg.train:
        if train_texts is None:
            raise ValueError("training a tokenizer needs the training texts")
        trainer = TOKENIZER_TRAINERS[tcfg.kind]
        tokenizer = trainer(train_texts, tcfg.vocab_size, tcfg.min_frequency, max_length)
        if tcfg.chat_template:
            apply_chat_template_preset(tokenizer, tcfg.chat_template, trained_here=True)
        return with_added_special_tokens(tokenizer, tcfg)
    name = tcfg.name_or_path or cfg.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise _hub_error("model.tokenizer.name_or_path" if tcfg.name_or_path else "model.name_or_path", name, err) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style tokenizers ship without one
    if tcfg.chat_template:
        apply_chat_template_preset(tokenizer, tcfg.chat_template, trained_here=False, source=name)
    return with_added_special_tokens(tokenizer, tcfg)


def with_added_special_tokens(tokenizer: Any, tcfg: TokenizerConfig) -> Any:
    """Apply `model.tokenizer.add_bos_token` / `add_eos_token` through transformers' own
    post-processor update, so the `tokenizer.json` saved with the model encodes the same way.

    A decoder classifier reads its last token; packing put EOS around every pretraining document,
    so BOS/EOS around each text shows the model a whole document the way it learned them.
    transformers reads the flags back from `tokenizer.json` alone (a reloaded tokenizer reports
    them False), so the current state is read from what the tokenizer does to a text."""
    if tcfg.add_bos_token is None and tcfg.add_eos_token is None:
        return tokenizer
    field = "model.tokenizer.add_eos_token" if tcfg.add_eos_token is not None else "model.tokenizer.add_bos_token"
    current, others = _added_special_tokens(tokenizer)
    wanted = {flag: current[flag] if getattr(tcfg, flag) is None else getattr(tcfg, flag) for flag in current}
    if wanted == current:
        return tokenizer
    for flag, token in (("add_bos_token", "bos_token"), ("add_eos_token", "eos_token")):
        if wanted[flag] and getattr(tokenizer, token, None) is None:
            raise UserError.of(f"model.tokenizer.{flag}", f"the tokenizer has no {token} to add",
                               f"leave model.tokenizer.{flag} null, or use a tokenizer with a {token}")
    if wanted["add_eos_token"] and tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise UserError.of("model.tokenizer.add_eos_token", "the tokenizer pads with its EOS, so the classifier would take the "
                           "added EOS for padding and read the token before it", "leave it null for this tokenizer")
    if others:  # transformers' update keeps BOS/EOS only: [CLS]/[SEP]-like tokens would be lost
        raise UserError.of(field, f"{type(tokenizer).__name__} adds other special tokens around a text, which the flag would drop",
                           "leave model.tokenizer.add_bos_token/add_eos_token null for this tokenizer")
    if not hasattr(tokenizer, "update_post_processor"):
        raise UserError.of(field, f"{type(tokenizer).__name__} cannot change the special tokens it adds",
                           "leave it null, or use a tokenizer backed by the tokenizers library")
    for flag, value in wanted.items():
        object.__setattr__(tokenizer, f"_{flag}", value)  # the properties' storage; one update for both
    tokenizer.update_post_processor()
    if _added_special_tokens(_saved_and_reloaded(tokenizer))[0] != wanted:
        raise UserError.of(field, f"{type(tokenizer).__name__} resets the flag when it is loaded again, so the saved model "
                           "would encode differently from its training", "leave it null for this tokenizer")
    log.info("tokenizer: BOS before every text %s, EOS after it %s", wanted["add_bos_token"], wanted["add_eos_token"])
    return tokenizer


def _added_special_tokens(tokenizer: Any) -> tuple[dict[str, bool], int]:
    """Whether encoding a text puts the BOS first / the EOS last (read from the encoding itself),
    and how many other tokens the tokenizer adds around it."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    extra = len(full) - len(plain)
    bos = extra > 0 and tokenizer.bos_token_id is not None and full[0] == tokenizer.bos_token_id
    eos = extra > int(bos) and tokenizer.eos_token_id is not None and full[-1] == tokenizer.eos_token_id
    return {"add_bos_token": bool(bos), "add_eos_token": bool(eos)}, extra - int(bos) - int(eos)


def _saved_and_reloaded(tokenizer: Any) -> Any:
    """The tokenizer as `from_pretrained` gives it back after `save_pretrained` (some classes,
    GPT-NeoX's for one, rebuild their template from defaults when loaded)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)


def build_config(cfg: ModelConfig, tokenizer: Any) -> Any:
    """A fresh model config of `cfg.architecture` with the YAML sizes and the tokenizer's ids."""
    if cfg.architecture not in CONFIG_MAPPING:
        raise UserError.of(
            "model.architecture", f"unknown architecture '{cfg.architecture}'",
            "use a transformers model_type such as gpt2, llama, qwen2, bert",
        )
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    return AutoConfig.for_model(
        cfg.architecture, **dict(cfg.config), vocab_size=len(tokenizer), **{k: v for k, v in ids.items() if v is not None}
    )


def load_model(cfg: ModelConfig, tokenizer: Any, auto_class: Any = AutoModelForCausalLM, **extra: Any) -> PreTrainedModel:
    """`auto_class.from_pretrained(name_or_path)`, or `from_config` for models built from sizes
    (and for `random_init` controls, from the checkpoint's own config).

    `extra` carries objective- and strategy-specific keyword arguments (labels, quantisation).
    """
    dtype = torch_dtype(cfg.dtype)
    head_kwargs = {k: extra.pop(k) for k in ("num_labels", "id2label", "label2id", "problem_type") if k in extra}
    meta = (_on_meta_if_readable(cfg, tokenizer, auto_class, dtype, head_kwargs)
            if cfg.name_or_path and not cfg.random_init and reads_own_shards(extra) else None)
    if meta is not None:
        model = meta  # every rank reads its own slices of the checkpoint once the Trainer shards it
    elif cfg.name_or_path and cfg.random_init:
        model = auto_class.from_config(_checkpoint_config(cfg, head_kwargs), dtype=dtype)
    elif cfg.name_or_path and receives_weights_from_rank_0(extra):
        model = _empty_from_checkpoint_config(cfg, auto_class, dtype, head_kwargs)
    elif cfg.name_or_path:
        kwargs: dict[str, Any] = dict(
            revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=dtype, **head_kwargs, **extra,
            use_safetensors=None if cfg.allow_pickle else True,  # None: safetensors first, else a pickle
        )
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        if cfg.config:
            kwargs.update(dict(cfg.config))  # config overrides, e.g. dropout
        try:
            model = auto_class.from_pretrained(cfg.name_or_path, **kwargs)
        except (OSError, ValueError) as err:
            refused = None if cfg.allow_pickle else pickle_refused(cfg.name_or_path, err)
            raise (refused or _hub_error("model.name_or_path", cfg.name_or_path, err)) from err
    else:
        config = build_config(cfg, tokenizer)
        for key, value in head_kwargs.items():
            setattr(config, key, value)
        if cfg.attn_implementation:
            config._attn_implementation = cfg.attn_implementation
        model = auto_class.from_config(config, dtype=dtype)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        log.info("resizing token embeddings to the tokenizer's %d tokens", len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def reads_own_shards(extra: dict[str, Any]) -> bool:
    """FSDP's low-memory loading by slices is on for this run (`training.low_memory_loading`): every
    rank builds the model on the meta device and reads its own slices of the checkpoint when the
    Trainer shards it (`models.sharded_loading`). Never for a 4-bit base."""
    from ptft_hf.training.low_memory_loading import SHARDS, loading_mode

    return "quantization_config" not in extra and loading_mode() == SHARDS


def _checkpoint_config(cfg: ModelConfig, head_kwargs: dict[str, Any]) -> Any:
    try:
        config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                            **dict(cfg.config), **head_kwargs)
    except (OSError, ValueError) as err:
        raise _hub_error("model.name_or_path", cfg.name_or_path, err) from err
    if cfg.attn_implementation:
        config._attn_implementation = cfg.attn_implementation
    return config


def _on_meta_if_readable(cfg: ModelConfig, tokenizer: Any, auto_class: Any, dtype: Any,
                         head_kwargs: dict[str, Any]) -> PreTrainedModel | None:
    """The checkpoint's architecture on the meta device, marked with the folder each rank reads its
    slices from; None, with the reason logged, when the checkpoint cannot be read that way (the
    caller then loads as rank 0 reading for all)."""
    from ptft_hf.models import sharded_loading as shards

    folder = shards.checkpoint_folder(cfg.name_or_path, cfg.revision)
    config = _checkpoint_config(cfg, head_kwargs)
    why = None if folder is not None else "it has no safetensors weights"
    if why is None and getattr(config, "quantization_config", None):
        why = "its weights are stored quantised (from_pretrained unpacks them)"
    if why is None and len(tokenizer) > config.vocab_size:
        why = f"the tokenizer's {len(tokenizer)} tokens need a larger embedding than the checkpoint's {config.vocab_size}"
    model = None
    if why is None:
        stored = getattr(config, "dtype", None)  # "auto": the checkpoint's own dtype, as from_pretrained takes it
        model = shards.build_on_meta(auto_class, config, (stored if isinstance(stored, torch.dtype) else torch.float32)
                                     if dtype == "auto" else dtype, trust_remote_code=cfg.trust_remote_code)
        why = shards.checkpoint_mismatch(model, shards.checkpoint_shapes(folder))
    if why is not None:
        log.info("FSDP low-memory loading: rank 0 reads %s for every rank, because %s", cfg.name_or_path, why)
        return None
    setattr(model, shards.READS_SHARDS_FROM, folder)
    _checkpoint_generation_config(model, cfg)
    log.info("model: built on the meta device; every rank reads its own slices of %s when FSDP shards it", folder)
    return model


def _checkpoint_generation_config(model: PreTrainedModel, cfg: ModelConfig) -> None:
    """The checkpoint's own `generation_config.json` (stop tokens, sampling defaults) on a model built
    from its config, as `from_pretrained` reads it: every rank generates under FSDP, and a rank that
    stopped at other tokens would leave the others waiting. Without the file, the defaults from
    config.json stay, as with `from_pretrained`."""
    if not model.can_generate():
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision)
    except OSError:
        pass


def receives_weights_from_rank_0(extra: dict[str, Any]) -> bool:
    """FSDP's low-memory loading is on (the way LoRA/DoRA load, and the fallback of `reads_own_shards`)
    and this process is not rank 0: rank 0 alone reads the checkpoint, and accelerate broadcasts each
    rank its shards when it shards the model
    (`fsdp_config.cpu_ram_efficient_loading`, `fsdp2_load_full_state_dict`). transformers' own switch
    (`is_fsdp_enabled`: ACCELERATE_USE_FSDP and FSDP_CPU_RAM_EFFICIENT_LOADING, set as `accelerate
    launch` sets them, see `training.low_memory_loading`) says it is on; transformers 5 itself still
    reads every weight on every rank there, which is what this skips. A 4-bit base is loaded by
    every rank (accelerate does not broadcast quantised weights)."""
    if "quantization_config" in extra:
        return False
    from transformers.integrations import is_fsdp_enabled

    from ptft_hf.distributed import is_main_process

    return is_fsdp_enabled() and not is_main_process()


def _empty_from_checkpoint_config(cfg: ModelConfig, auto_class: Any, dtype: Any, head_kwargs: dict[str, Any]) -> PreTrainedModel:
    """The checkpoint's architecture with weights allocated but never written (transformers'
    `no_init_weights`, as for DeepSpeed's ZeRO-3): untouched pages are not resident, and accelerate
    moves the model to the meta device before the broadcast fills it. Non-persistent buffers (rotary
    frequencies) are computed as usual: accelerate keeps them."""
    from transformers import initialization

    config = _checkpoint_config(cfg, head_kwargs)
    with initialization.no_init_weights():
        model = auto_class.from_config(config, dtype=torch.float32 if dtype == "auto" else dtype,
                                       trust_remote_code=cfg.trust_remote_code)
    model.tie_weights()  # no_init_weights skips init_weights, which ties them
    _checkpoint_generation_config(model, cfg)
    log.info("model: built empty on this rank; rank 0 reads %s and FSDP sends this rank its shards", cfg.name_or_path)
    return model


def load_causal_lm(cfg: ModelConfig, tokenizer: Any, **extra: Any) -> PreTrainedModel:
    return load_model(cfg, tokenizer, AutoModelForCausalLM, **extra)


def max_positions(model: PreTrainedModel) -> int | None:
    """The longest context the model's position embeddings allow, if the config says."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            return value
    return None


def count_parameters(model: torch.nn.Module) -> dict[str, float]:
    """Total and trainable parameters; peft's count when wrapped (it unpacks 4-bit weights)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "parameters": total,
        "trainable_parameters": trainable,
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
    }

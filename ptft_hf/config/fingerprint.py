"""A run's fingerprint: what it computes, hashed. Pipelines skip a finished stage whose fingerprint
is unchanged, and a stage's lineage records its base's."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from ptft_hf.config.redact import MASK, redact

# switches that change how a run is carried out or published, not what it computes
NOT_FINGERPRINTED = {"overwrite", "verbose", "hub", "matrix", "tracking"}  # matrix: the pipeline scores its stages after them
_NOT_FINGERPRINTED_TRAINER = {"resume_from_checkpoint", "disable_tqdm"}
# options added after runs were finished, left out at their "off" value: the run computes what it did
# before they existed, so a finished stage keeps its fingerprint
_OFF_OPTIONS = {("objective", "rdrop_alpha"): 0.0, ("model", "tokenizer", "add_bos_token"): None,
                ("model", "tokenizer", "add_eos_token"): None, ("objective", "options"): {},
                ("data", "validation_path"): None, ("data", "validation_split"): None,
                ("data", "validation_fraction"): 0.05, ("data", "chat_format"): None, ("data", "fields"): {}}
# defaults another field carries: `objective.max_steps` only supplies trainer.max_steps, which is fingerprinted
_ECHOED = (("objective", "max_steps"),)


def config_fingerprint(cfg: DictConfig) -> str:
    """sha256 of what a run computes: its resolved config less `overwrite`, `verbose`, `hub.*` and
    the like, secrets (tokens) masked, so a rotated token or a push added later changes nothing.
    A pipeline re-run skips a finished stage whose `metrics.json` holds the same fingerprint; a
    later stage's lineage records its base stage's fingerprint."""
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    resolved = {k: v for k, v in resolved.items() if k not in NOT_FINGERPRINTED}
    resolved["trainer"] = {k: v for k, v in (resolved.get("trainer") or {}).items()
                           if v is not None and v != MASK and k not in _NOT_FINGERPRINTED_TRAINER}
    if not (resolved.get("eval") or {}).get("tasks"):  # no evaluation asked: runs from before `eval` existed
        resolved.pop("eval", None)
    for *parents, key in _ECHOED:
        section = resolved
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(key, None)
    for (*parents, key), off in _OFF_OPTIONS.items():
        section = resolved
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        if isinstance(section, dict) and key in section and section[key] == off:
            del section[key]
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()

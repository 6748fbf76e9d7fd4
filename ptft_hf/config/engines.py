"""Engine configs shipped inside the package (DeepSpeed JSON), named by the `distributed` presets.

`${ptft_hf_engine:deepspeed_zero3.json}` in a config resolves to the file's path in the installed
package, so the run's config.yaml records exactly which file TrainingArguments read. The files sit
in `ptft_hf/engines/`; this module only names them (config/ imports no other part of ptft_hf).
"""

from __future__ import annotations

from pathlib import Path

ENGINE_DIR = Path(__file__).resolve().parent.parent / "engines"
RESOLVER = "ptft_hf_engine"


def engine_file(name: str) -> str:
    """The path of a shipped engine config, e.g. `deepspeed_zero3.json`."""
    path = ENGINE_DIR / name
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in ENGINE_DIR.glob("*.json")))
        raise ValueError(f"no engine config '{name}' ships with ptft_hf; choose one of: {shipped}")
    return str(path)

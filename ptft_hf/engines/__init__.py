"""Engine configs shipped inside the package (DeepSpeed JSON), named by the `distributed` presets
through the `${ptft_hf_engine:NAME.json}` resolver (`ptft_hf.config.engines`)."""

from ptft_hf.config.engines import ENGINE_DIR, RESOLVER, engine_file

__all__ = ["ENGINE_DIR", "RESOLVER", "engine_file"]

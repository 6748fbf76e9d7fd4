"""ptft_hf: pretraining and fine-tuning of language models the Hugging Face way.

From Python (a notebook): `ptft_hf.compose(...)`, `ptft_hf.run(...)`, `ptft_hf.open_run(...)`,
`ptft_hf.plot_losses(...)`; see `ptft_hf.api`.
"""

__version__ = "0.1.0"

_API = ("compose", "run", "open_run", "plot_losses", "compare", "Experiment", "RunResult")


def __getattr__(name: str):  # the API loads Hydra/transformers only when used
    if name in _API:
        from ptft_hf import api

        return getattr(api, name)
    raise AttributeError(f"module 'ptft_hf' has no attribute {name!r}")

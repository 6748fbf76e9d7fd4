"""ptft_hf: pretraining and fine-tuning of language models the Hugging Face way."""

__version__ = "0.1.0"

"""Models and tokenizers: load from the Hub or a folder, or build from a config."""

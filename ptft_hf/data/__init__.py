"""Data: sources (files, Hub, builtin corpora), processing (tokenise, pack) and collators."""

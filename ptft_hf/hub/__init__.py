"""Publishing: model cards with lineage, staging and reload checks, Hub pushes, adapter merging."""

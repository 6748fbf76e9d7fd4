"""Publishing: merge/export of adapters (and, later, model cards and Hub pushes)."""

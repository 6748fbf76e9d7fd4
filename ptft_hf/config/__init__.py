"""Config schemas and cross-group validation."""

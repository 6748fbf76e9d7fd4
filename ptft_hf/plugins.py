"""Objectives and strategies that installed packages add: declared as entry points, imported on
first need (importing the module registers it; see the README's "Adding an objective")."""

from __future__ import annotations

from collections.abc import Container


def load_entry_points(group: str, registered: Container[str]) -> None:
    """Import every module declared under the entry-point `group` whose name is not `registered` yet."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=group):
        if entry.name not in registered:
            entry.load()

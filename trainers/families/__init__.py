"""Language-model families, chosen by registry name (trainers/families/registry.py).

Importing this package stays light (no torch): `build_family` imports the implementation module only
when a run actually trains or evaluates.
"""

from __future__ import annotations

from typing import Any


def build_family(name: str, options: dict[str, Any] | None, *, vocab_size: int, mask_token_id: int):
    """Validate `options` with the family's options model and build its `Family`.

    Fails with the registry's message for an unknown name and pydantic's for a bad option.
    """
    from trainers.families.registry import get_entry

    entry = get_entry(name)
    parsed = entry.parse_options(dict(options or {}))
    return entry.load().build(parsed, vocab_size=vocab_size, mask_token_id=mask_token_id)

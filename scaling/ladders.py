"""Model ladders: the shapes a sweep may choose from, per budget.

`paper` is the study's 28 shapes (shared/data/paper_grid/models.csv: name, blocks, width, heads),
shipped with the package as scaling/data/paper_ladder.csv so an installed tool needs no repo.
"""

from __future__ import annotations

import csv
from importlib import resources

from scaling.schema import Ladder, Shape


def load_paper_ladder() -> list[Shape]:
    text = resources.files("scaling").joinpath("data/paper_ladder.csv").read_text()
    return [
        Shape(name=row["name"], n_layers=int(row["n_layers"]), d_model=int(row["d_model"]),
              n_heads=int(row["n_heads"]))
        for row in csv.DictReader(text.splitlines())
    ]


NAMED_LADDERS = {"paper": load_paper_ladder}


def build_ladder(ladder: Ladder) -> list[Shape]:
    """The ladder's shapes, smallest first (by width then depth)."""
    if ladder.named is not None:
        shapes = NAMED_LADDERS[ladder.named]()
    elif ladder.shapes is not None:
        shapes = list(ladder.shapes)
    else:
        gen = ladder.generate
        shapes = [
            Shape(n_layers=n_layers, d_model=d_model, n_heads=max(1, d_model // gen.head_dim))
            for n_layers in gen.n_layers
            for d_model in gen.d_model
        ]
    unique = {(s.n_layers, s.d_model, s.n_heads): s for s in shapes}
    return sorted(unique.values(), key=lambda s: (s.d_model, s.n_layers))

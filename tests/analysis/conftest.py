"""Fixtures of the analysis tests: published scaling data from the shared folder."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def porian_runs(shared_data) -> pd.DataFrame:
    """Porian et al. 2024's 15 published iso-FLOP sweeps, one row per run
    (shared/data/porian2024/README.md)."""
    return pd.read_csv(shared_data / "porian2024" / "isoflop_points.csv")

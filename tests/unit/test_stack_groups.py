"""How strategies are grouped into stacked programs (tasks.branches.stack_groups)."""

from __future__ import annotations

import itertools

import pytest

from tasks.branches import PARALLEL_STACK_ROWS, stack_groups
from tasks.config import TrainConfig
from tasks.strategies import STRATEGIES


def networks(names: list[str], config: TrainConfig) -> int:
    """Distinct networks: members that train alike are one network."""
    return len(
        {
            STRATEGIES[n].trains_like(config.seed + m)
            for n in names
            for m in range(STRATEGIES[n].members(config.ensemble_k))
        }
    )


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("parallel", [1, 2, 3])
@pytest.mark.parametrize("size", [2, 5, 8])
def test_every_strategy_lands_in_one_balanced_program(k, parallel, size):
    config = TrainConfig(ensemble_k=k, max_parallel=parallel)
    for names in itertools.islice(itertools.combinations(STRATEGIES, size), 0, None, 7):
        names = list(names)
        small = stack_groups(names, config, PARALLEL_STACK_ROWS - 1)
        assert len(small) == 1 and sorted(small[0]) == sorted(names)  # small data: one program
        groups = stack_groups(names, config, PARALLEL_STACK_ROWS)
        assert sorted(sum(groups, [])) == sorted(names) and all(groups)
        assert len(groups) == min(parallel, len(names)) or len(groups) < parallel
        if {"undersample", "ensemble"} <= set(names):  # they share a network: one program
            assert any({"undersample", "ensemble"} <= set(g) for g in groups)
        sizes = [networks(g, config) for g in groups]
        biggest = max(networks([n], config) for n in names) + (k if "ensemble" in names else 0)
        assert max(sizes) - min(sizes) <= biggest
        assert sum(sizes) == networks(names, config)  # no network trained twice

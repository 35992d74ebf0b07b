import pytest
import torch

from svitt.models.order import inverse_permutation, token_order


def coords(grid):
    axes = [torch.arange(s) for s in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


@pytest.mark.parametrize("kind", ["raster", "morton", "hilbert"])
@pytest.mark.parametrize("grid", [(1, 1, 1), (4, 14, 14), (3, 5, 7), (2, 8, 8), (5, 3, 1)])
def test_orders_are_round_tripping_permutations(kind, grid):
    perm = token_order(grid, kind)
    n = grid[0] * grid[1] * grid[2]
    assert sorted(perm.tolist()) == list(range(n))
    x = torch.randn(n, 3)
    assert torch.equal(x[perm][inverse_permutation(perm)], x)
    assert torch.equal(inverse_permutation(perm)[perm], torch.arange(n))


def test_raster_is_identity():
    assert torch.equal(token_order((2, 3, 4), "raster"), torch.arange(24))


def test_morton_visits_each_octant_first():
    grid = (4, 4, 4)
    c = coords(grid)[token_order(grid, "morton")]
    # first 8 points: the 2x2x2 corner cube in bit-interleaved order (t most significant)
    assert c[:8].tolist() == [[t, h, w] for t in (0, 1) for h in (0, 1) for w in (0, 1)]
    assert (c[:8] < 2).all() and (c[8:16] < 4).all() and c[8:16, 2].min() == 2


@pytest.mark.parametrize("side", [2, 4, 8])
def test_hilbert_steps_to_a_neighbour_in_a_cube(side):
    grid = (side, side, side)
    c = coords(grid)[token_order(grid, "hilbert")]
    steps = (c[1:] - c[:-1]).abs().sum(dim=1)
    assert (steps == 1).all()


def test_unknown_order_names_the_allowed_values():
    with pytest.raises(ValueError, match="raster, morton, hilbert"):
        token_order((2, 2, 2), "zigzag")

"""DDP: two gloo processes give the single-process loss and gradients of the combined batch."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from svitt.engine.distributed import epoch_batches

GLOBAL_BATCH = 6


def _tiny_model():
    from conftest import tiny_text, tiny_vision

    from svitt.config import ModelConfig, SparsityConfig
    from svitt.models.factory import create_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        vision=tiny_vision(num_frames=2, heads=2),
        text=tiny_text(vocab_size=64, depth=2, cross_depth=1, heads=2),
        sparsity=SparsityConfig(block_size=2, visual_drop_layers=(), cross_drop_layers=()),
        embed_dim=16,
        loss_weights={"vtc": 1.0},
    )
    return create_model(cfg).eval()  # eval: no dropout, so every process computes the same


def _batch():
    generator = torch.Generator().manual_seed(1)
    return {
        "video": torch.randn(GLOBAL_BATCH, 2, 3, 16, 16, generator=generator),
        "text_ids": torch.randint(4, 64, (GLOBAL_BATCH, 8), generator=generator),
        "text_mask": torch.ones(GLOBAL_BATCH, 8, dtype=torch.long),
        "video_id": torch.arange(GLOBAL_BATCH),
    }


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from svitt.engine.distributed import gather_with_grad, init_distributed, shutdown

    env = init_distributed("cpu")
    model = _tiny_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    local = GLOBAL_BATCH // world
    batch = {k: v[rank * local : (rank + 1) * local] for k, v in _batch().items()}
    loss = ddp(batch, gather=gather_with_grad)["loss"]
    loss.backward()
    # Uneven shards (a batch that lost a bad video) still gather in rank order.
    uneven = gather_with_grad(torch.arange(rank + 2, dtype=torch.float) + 10 * rank)
    torch.save(
        {"loss": loss.detach(), "grads": _grads(model), "uneven": uneven, "world": env.world_size},
        Path(out) / f"rank{rank}.pt",
    )
    shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process_on_the_combined_batch(tmp_path):
    model = _tiny_model()
    loss = model(_batch())["loss"]
    loss.backward()
    expected = _grads(model)

    # fork: the children inherit the imported modules instead of importing them again.
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for result in results:
        assert result["world"] == 2
        # Negatives span the global batch: every rank's VTC is the combined batch's VTC.
        torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        # DDP's averaged gradients equal the single-process gradients (up to float32 sums in
        # another order: a few elements of ~1e-3 differ by ~1e-6).
        torch.testing.assert_close(result["grads"], expected, rtol=1e-4, atol=1e-5)
        assert result["uneven"].tolist() == [0.0, 1.0, 10.0, 11.0, 12.0]


def test_epoch_batches_shard_one_seeded_permutation():
    one = epoch_batches(10, 4, seed=3, epoch=1, rank=0, world_size=1)
    assert len(one) == 2 and all(len(b) == 4 for b in one)  # the incomplete tail is dropped
    ranks = [epoch_batches(10, 4, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    for step, batch in enumerate(one):
        assert ranks[0][step] + ranks[1][step] == batch
    assert epoch_batches(10, 4, 3, 2, 0, 1) != one  # a new order every epoch
    assert epoch_batches(10, 4, 3, 1, 0, 1) == one  # and the same order when asked again


@pytest.mark.parametrize(
    ("samples", "batch", "world", "message"),
    [(10, 5, 2, "a multiple of the 2 processes"), (3, 4, 1, "at most the 3 training samples")],
)
def test_epoch_batches_reject_bad_batch_sizes(samples, batch, world, message):
    with pytest.raises(ValueError, match=message):
        epoch_batches(samples, batch, 0, 0, 0, world)

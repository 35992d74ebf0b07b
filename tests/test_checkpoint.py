"""Checkpoints: atomic writes, weights_only loading, RNG round trip, finished-run detection."""

import errno
import json
import os
import random
import re

import numpy as np
import pytest
import torch

from svitt.config import RunConfig, asdict
from svitt.engine.checkpoint import (
    finished_run,
    rng_state,
    run_identity,
    save_checkpoint,
    save_json,
    set_rng_state,
)
from svitt.engine.optim import build_scheduler, lr_factor, no_decay_names
from svitt.errors import DiskFullError
from svitt.files import atomic_write
from svitt.models.checkpoints import load_checkpoint


def test_checkpoint_loads_with_weights_only_and_restores_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, 2, 10)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": 1,
        "rng": [rng_state()],
        "config": asdict(RunConfig()),
    }
    save_checkpoint(tmp_path / "last.pt", state)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    loaded = torch.load(tmp_path / "last.pt", weights_only=True)  # no pickled objects inside
    assert loaded["config"] == asdict(RunConfig())
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    restored.load_state_dict(loaded["optimizer"])
    assert restored.state_dict()["state"][0]["step"] == 1


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    save_json(path, {"r1": 1.0})

    def broken(handle):
        handle.write(b"{partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"r1": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left over


def test_a_full_disk_is_one_clear_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_json(path, {"step": 1})

    def full(handle):
        handle.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(
        DiskFullError, match=f"^{re.escape(str(path))}: cannot write it: No space left on device"
    ):
        atomic_write(path, full)
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a svitt checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_finished_run_detection(tmp_path):
    config = asdict(RunConfig())
    same = run_identity("pretrain", config, None)
    assert not finished_run(tmp_path, same, needs_checkpoint=True)
    save_json(tmp_path / "metrics.json", {"loss": 1.0, "run": same})
    assert not finished_run(tmp_path, same, needs_checkpoint=True)  # no checkpoint.pt yet
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert finished_run(tmp_path, same, needs_checkpoint=True)
    # The tracking URI and loader workers do not change results: still the same run.
    config["tracking"]["uri"] = "http://elsewhere:5000"
    config["data"]["num_workers"] = 7
    assert finished_run(tmp_path, run_identity("pretrain", config, None), True)
    config["optim"]["lr"] = 1.0
    with pytest.raises(FileExistsError, match=r"different stage, config.*--force"):
        finished_run(tmp_path, run_identity("pretrain", config, None), True)


def test_cosine_schedule_with_warmup():
    assert lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20) == pytest.approx(0.5)
    assert lr_factor(20, 4, 20) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)


def test_cosine_schedule_ends_at_the_minimum_ratio():
    """The release decays to lr * min_lr_multi (0.01 pre-training, 0.1 downstream)."""
    assert lr_factor(3, 4, 20, min_lr_ratio=0.1) == pytest.approx(1.0)  # warm-up unchanged
    assert lr_factor(4, 4, 20, min_lr_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(20, 4, 20, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(25, 4, 20, min_lr_ratio=0.01) == pytest.approx(0.01)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_scheduler(optimizer, 0, 10, min_lr_ratio=0.01)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)


def test_no_weight_decay_on_norms_biases_and_listed_parameters():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.table = torch.nn.Parameter(torch.zeros(3, 4))
            self.weight2d = torch.nn.Parameter(torch.zeros(3, 4))

        def no_weight_decay(self):
            return {"table"}

    assert no_decay_names(Net()) == {"proj.bias", "norm.weight", "norm.bias", "table"}


def test_backward_of_a_table_lookup_is_bit_exact_at_two_threads():
    """On CPU with several threads the accumulating backward of an index lookup (the relative
    bias table's) adds in thread order, so two identical runs differed; a stage with more than
    one thread switches torch to its deterministic kernels, and restores the setting after."""
    from svitt.engine.lifecycle import deterministic_threads

    generator = torch.Generator().manual_seed(0)
    table = torch.randn(1000, 4, generator=generator, requires_grad=True)
    index = torch.randint(0, 1000, (8, 65, 65), generator=generator)
    weight = torch.randn(8, 65, 65, 4, generator=generator)

    def grad() -> torch.Tensor:
        table.grad = None
        (table[index] * weight).sum().backward()
        return table.grad.clone()

    def stage() -> int:
        with deterministic_threads(torch.device("cpu")):
            first = grad()
            assert all(torch.equal(first, grad()) for _ in range(5))
        return 0

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert stage() == 0
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()

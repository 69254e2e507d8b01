"""Data-parallel training (2 gloo CPU processes) equals single-process training on the same batches."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_tiny_model
from safetensors.torch import load_file, save_file

from tc_circuits.training.distributed import DistInfo, dist_info, rank_slice
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.trainer import train_transcoders

CFG = TrainConfig(layers=(0, 1), kind="skip_transcoder", n_latents=64, k=4, batch_size=64,
                  buffer_tokens=256, total_tokens=64 * 8, warmup_steps=2, lr=3e-3,
                  dead_tokens_threshold=128, log_every=2, checkpoint_every=3)


def _tokens():
    return torch.randint(0, 50, (256, 16), generator=torch.Generator().manual_seed(0))


def _flat(result) -> dict[str, torch.Tensor]:
    return {f"{L}.{n}": p.detach().contiguous() for L, tc in result.transcoders.items()
            for n, p in tc.named_parameters()}


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        assert dist_info() == DistInfo(rank, world)
        result = train_transcoders(make_tiny_model(), _tokens(), CFG.replace(out_dir=f"{tmp}/ddp"), progress=False)
        flat = _flat(result)
        save_file(flat, f"{tmp}/rank{rank}.safetensors")
        if rank == 0:
            save_file({k: torch.tensor([m.fvu, m.l0, m.dead_fraction]) for k, m in
                       ((str(L), m) for L, m in result.metrics.items())}, f"{tmp}/metrics.safetensors")
    finally:
        dist.destroy_process_group()


def test_rank_slice():
    assert rank_slice(8, DistInfo(1, 2)) == slice(4, 8)
    with pytest.raises(ValueError, match="world_size=3"):
        rank_slice(8, DistInfo(0, 3))


def test_two_processes_match_single_process(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    single = _flat(train_transcoders(make_tiny_model(), _tokens(), CFG, progress=False))
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    for name, ref in single.items():
        torch.testing.assert_close(rank0[name], ref, rtol=0, atol=1e-5, msg=name)
        assert torch.equal(rank0[name], rank1[name]), name  # ranks stay identical
    # only rank 0 wrote files, and they are complete
    assert (tmp_path / "ddp" / "transcoders" / "layer_1" / "weights.safetensors").is_file()
    assert (tmp_path / "ddp" / "checkpoint" / "state.json").is_file()
    assert not os.path.exists(tmp_path / "ddp" / "checkpoint.tmp")

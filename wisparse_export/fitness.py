"""The search's fitness: KL(dense || sparse) of candidate allocations on fixed calibration batches, in this process
or spread over processes that each hold a replica of the model (`Replicas`, torch.distributed: gloo on CPU, NCCL
on GPUs, one GPU per process).

Replicas are started by the search itself (torch.multiprocessing, spawn), not by torchrun: only the fitness runs
in parallel, so one command line and one process own the model, the checkpoint and the plan; the workers receive
the weights from it (a broadcast, GPU to GPU on NCCL), the plan's thresholds per candidate, and send back one KL
per candidate. Each candidate is judged by exactly one process on the same tokens and weights, so the search's
result does not depend on how many judge it (on identical devices with deterministic kernels).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from .calibration import Allocation, Stats
from .errors import WisparseError
from .evaluate import half_log_probs, kl_pieces
from .models import input_device, offloaded
from .plan import Plan
from .random_models import meta_model
from .runtime import apply, dense_mode, sparse_linears

Settings = dict[str, tuple[float, float, float]]  # {linear: (threshold, alpha, sparsity)}: what a replica is sent


class KLFitness:
    """Mean KL(dense || sparse) per token on fixed calibration batches; dense log-probs cached once (float16, in
    host memory: on the GPU they would cost 2 GB at a 128k vocabulary), log-probs made in bounded pieces.
    stats None: a replica's, which is sent thresholds (`measure`), not allocations."""

    def __init__(self, model: nn.Module, stats: Stats | None, batches: list[torch.Tensor]):
        self.model, self.stats, self.batches = model, stats, batches
        self.mods = sparse_linears(model)
        self.calls = 0
        with torch.no_grad(), dense_mode(model):
            self.dense = [half_log_probs(model(input_ids=ids, use_cache=False).logits, torch.device("cpu"))
                          for ids in batches]

    def settings(self, allocation: Allocation) -> Settings:
        return {n: (self.stats.threshold(n, s, a), a, s) for n, (s, a) in allocation.items()}

    @torch.no_grad()
    def measure(self, settings: Settings, n_batches: int | None = None) -> float:
        for n, (t, a, s) in settings.items():
            self.mods[n].set(t, a, s)
        total, count = 0.0, 0
        for ids, ld in list(zip(self.batches, self.dense, strict=True))[:n_batches]:
            total += kl_pieces(ld, self.model(input_ids=ids, use_cache=False).logits)
            count += ids.numel()
        return total / count

    def __call__(self, allocation: Allocation, n_batches: int | None = None) -> float:
        self.calls += 1
        return self.measure(self.settings(allocation), n_batches)

    def many(self, allocations: list[Allocation], n_batches: int | None = None) -> list[float]:
        """Fitness of several allocations, in order (`replicas.Replicas` spreads them over processes)."""
        return [self(a, n_batches) for a in allocations]


def _tensors(model: nn.Module, config, dtype: torch.dtype) -> list[torch.Tensor]:
    """The model's parameters and buffers as a freshly built model of its config has them, in that order: what a
    replica receives (rank 0's own extras, such as quantized copies, stay out)."""
    fresh = meta_model(config, dtype)
    return ([model.get_parameter(n) for n, _ in fresh.named_parameters()]
            + [model.get_buffer(n) for n, _ in fresh.named_buffers()])


@torch.no_grad()
def _replica(config, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A model of `config` on `device` whose values come from rank 0's broadcast."""
    model = meta_model(config, dtype)
    model.to_empty(device=device)
    model.tie_weights()
    for t in _tensors(model, config, dtype):
        dist.broadcast(t.data, src=0)
    return model.eval()


def _serve(index: int, init: str, world: int, config, dtype: torch.dtype, device_type: str, plan: Plan,
           batches: list[torch.Tensor]) -> None:
    """A worker process (rank index + 1): its replica with the plan applied, then one share of every request until
    rank 0 sends None."""
    rank = index + 1
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init, rank=rank,
                            world_size=world)
    try:
        model = _replica(config, dtype, device)
        apply(model, plan, check=False)
        fit = KLFitness(model, None, [b.to(device) for b in batches])
        while (request := _receive()) is not None:
            settings, n_batches = request
            dist.all_gather_object([None] * world, [fit.measure(s, n_batches) for s in settings[rank::world]])
    finally:
        dist.destroy_process_group()


def _receive():
    box = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Replicas:
    """KLFitness over `world` processes: this one (rank 0, holding `fit`) and world - 1 workers, each with a
    replica of the model on its own GPU (cuda:1, cuda:2, ... next to rank 0's cuda:0) or on the CPU. `many` deals
    the candidates round-robin and gathers their values in order; single calls run here."""

    def __init__(self, model: nn.Module, plan: Plan, batches: list[torch.Tensor], world: int):
        device = input_device(model)
        if offloaded(model) or getattr(model, "hf_device_map", None) and len(set(model.hf_device_map.values())) > 1:
            raise WisparseError("parallel search workers hold a whole replica each: not with a model spread by a "
                                "device map (use --search-workers 1)")
        if device.type == "cuda" and ((device.index or 0) != 0 or world > torch.cuda.device_count()):
            raise WisparseError(f"{world} search workers take cuda:0..cuda:{world - 1}, the model on cuda:0 "
                                f"({torch.cuda.device_count()} GPU(s) visible, the model on {device})")
        self.world, self.calls = world, 0
        self.fit: KLFitness | None = None  # rank 0's own, set once the plan is applied here
        self.folder = tempfile.TemporaryDirectory(prefix="wisparse-search-")
        init = (Path(self.folder.name) / "store").as_uri()
        dtype = next(model.parameters()).dtype
        host = [b.cpu() for b in batches]
        self.workers = mp.start_processes(_serve, (init, world, model.config, dtype, device.type, plan, host),
                                          nprocs=world - 1, join=False, start_method="spawn")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init, rank=0,
                                world_size=world)
        with torch.no_grad():
            for t in _tensors(model, model.config, dtype):
                dist.broadcast(t.data, src=0)

    def many(self, allocations: list[Allocation], n_batches: int | None = None) -> list[float]:
        settings = [self.fit.settings(a) for a in allocations]
        dist.broadcast_object_list([(settings, n_batches)], src=0)
        gathered = [None] * self.world
        dist.all_gather_object(gathered, [self.fit.measure(s, n_batches) for s in settings[:: self.world]])
        values = [0.0] * len(settings)
        for r, part in enumerate(gathered):
            values[r:: self.world] = part
        self.calls += len(settings)
        return values

    def __call__(self, allocation: Allocation, n_batches: int | None = None) -> float:
        self.calls += 1
        return self.fit.measure(self.fit.settings(allocation), n_batches)

    def close(self) -> None:
        """Stop the workers (they leave on None) and wait for them."""
        if dist.is_initialized():
            dist.broadcast_object_list([None], src=0)
            dist.destroy_process_group()
        self.workers.join()
        self.folder.cleanup()

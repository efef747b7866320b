"""Image-sharded distribution of an explanation run over processes, GPUs and nodes.

An explanation optimises *per-image* mask vectors: there is no shared parameter to average, so the
explainer fits are never wrapped in DDP. Instead the run is sharded by images: every process
(``trainer.devices`` per node x ``trainer.num_nodes``) takes whole batches of its own and explains them
with ordinary single-device Lightning fits on its own device. The processes are started and joined by
Lightning (Fabric's DDP launcher: it re-runs ``explain.py`` once per extra device, or finds the
processes torchrun/SLURM started) and talk only to agree on when the run ends and what it did.

Exactness: the batches are those of a one-process run (fixed, in dataset order), every method is a
deterministic function of its batch (seeded per call), and the tables are computed from the
per-image records on disk; so N processes give the maps, manifest and tables of one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from hdm_lightning.errors import ConfigError

__all__ = ["Shard", "launch", "launched_processes", "run_device"]


@dataclass
class Shard:
    """This process's place in a run: rank among ``world`` processes, its device, the process group."""

    device: torch.device
    rank: int = 0
    world: int = 1
    fabric: object | None = None  # lightning.fabric.Fabric when world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run's shared files (config, manifest, tables) and owns the W&B run."""
        return self.rank == 0

    def take(self, work: list) -> list:
        """This process's share of ``work`` (the same list on every process): items ``rank, rank + world, ...``."""
        return work[self.rank :: self.world]

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.fabric is not None:
            self.fabric.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the processes (every process gets the sums)."""
        if self.fabric is None:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.fabric.all_reduce(t, reduce_op="sum").tolist()


def run_device(name: str) -> torch.device:
    """The torch device a ``device:`` setting names (``auto``: CUDA when available), or a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device {name!r} is not a torch device ({e}): use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here: use device=cpu (or auto)")
    return device


def launched_processes() -> int:
    """How many processes torchrun or SLURM started for this job (1 when started by hand)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or ("WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ):
        return int(os.environ.get("WORLD_SIZE", "1"))
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_NTASKS", "1"))
    return 1


def _accelerator(device: str) -> str:
    if device == "cpu":
        return "cpu"
    if device in ("cuda", "gpu") or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} asked for, but CUDA is not available here: use device=cpu")
        return "cuda"
    if device == "auto":
        return "cpu"
    raise ConfigError(f"device={device} cannot be shared by several processes: use device=cuda, auto or cpu")


def launch(device: str, devices: int = 1, num_nodes: int = 1, timeout_hours: float = 24.0) -> Shard:
    """Start (or join) the processes of a run and return this one's :class:`Shard`.

    With one process in all this is just the device (:func:`run_device`, no process group). Otherwise
    Lightning Fabric's DDP strategy launches the missing local processes (or joins those torchrun/SLURM
    started), sets up the process group (gloo on CPUs, NCCL on GPUs) and gives each its device.

    Raises:
        ConfigError: torchrun/SLURM started a different number of processes than
            ``devices x num_nodes``, or the device cannot be shared.
    """
    wanted = int(devices) * int(num_nodes)
    started = launched_processes()
    if started > 1 and started != wanted:
        raise ConfigError(
            f"this job was started as {started} processes, but trainer.devices={devices} x "
            f"trainer.num_nodes={num_nodes} = {wanted}: pass trainer.devices=<processes per node> "
            "trainer.num_nodes=<nodes> to match torchrun/srun"
        )
    if wanted == 1:
        return Shard(device=run_device(device))
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    fabric = Fabric(
        accelerator=_accelerator(device),
        devices=int(devices),
        num_nodes=int(num_nodes),
        strategy=DDPStrategy(timeout=timedelta(hours=float(timeout_hours))),
    )
    fabric.launch()  # from here on, every process runs the rest of the program
    return Shard(device=fabric.device, rank=fabric.global_rank, world=fabric.world_size, fabric=fabric)

"""Distributed data-parallel training: Lightning's strategy for ``train.strategy`` and the launcher's environment
(docs/compute.md)."""

from __future__ import annotations

from omegaconf import DictConfig

DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
# Set by Lightning's DDP launcher (strategy=ddp) in the launching process; left there, they make the next run
# in the same process (a sweep, a grid) believe that its other ranks were started externally, and it waits.
DDP_LAUNCH_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def trainer_strategy(train_cfg: DictConfig) -> str:
    """Lightning's strategy for ``train.strategy``. DDP looks for parameters without a gradient: MIMMO's and
    DUN's depth logits get none during the warm start and MIMMO-gamma's never do, which plain DDP refuses.
    ``auto`` with more than one device or node is DDP (Lightning's choice) with that setting."""
    strategy, devices = str(train_cfg.strategy), train_cfg.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    several_devices = devices > 1 if isinstance(devices, int) else not isinstance(devices, str) and len(devices) > 1
    if strategy == "auto" and (several_devices or int(train_cfg.num_nodes) > 1):
        strategy = "ddp"
    return f"{strategy}_find_unused_parameters_true" if strategy in DDP_STRATEGIES else strategy


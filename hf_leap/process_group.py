"""LEAP's dealings with the ``torch.distributed`` process group: a start-up check that every
rank draws the same noise, and a clean shutdown of the group a training script leaves open."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from .noise import NOISE_BLOCK_SIZE, fill_keyed_normal_


def noise_fingerprint(device: torch.device | str) -> int:
    """A 63-bit digest of one full block of LEAP noise drawn on ``device`` from a fixed key.

    The digest covers the exact bits of the block (hashed on the host), so it is equal on two
    devices exactly when they draw identical noise from identical keys.

    Args:
        device: Where to draw the block, e.g. ``"cpu"`` or ``"cuda:0"``.

    Returns:
        The digest, a non-negative ``int`` below 2**63.

    Examples:
        >>> noise_fingerprint("cpu") == noise_fingerprint(torch.device("cpu"))
        True
    """
    device = torch.device(device)
    block = fill_keyed_normal_(torch.empty(NOISE_BLOCK_SIZE, device=device), mean=0.0, std=1.0, seed=0, step=0,
                               tensor_key=0, global_numel=NOISE_BLOCK_SIZE, generator=torch.Generator(device))
    digest = hashlib.sha256(block.cpu().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_noise_is_replicated(device: torch.device | str) -> bool:
    """Checks that every rank draws bit-identical LEAP noise from the same key; a collective.

    Data-parallel replicas stay identical only if each rank's generator turns the same key into
    the same numbers. That holds on CPUs and on identical GPUs, but CUDA's Philox output depends
    on the launch configuration (the SM count), so a job that mixes GPU models would let its
    replicas drift apart without any error. Every rank must call this at the same point (the
    ``LEAPTrainer`` does, before training, when there is more than one process); it costs one
    block of noise and one all-gather.

    Args:
        device: This rank's training device (where LEAP draws its noise).

    Returns:
        ``True`` when the ranks were compared and agree, ``False`` when there is nothing to
        compare (no process group, or a single process).

    Raises:
        RuntimeError: The ranks drew different noise; it names the disagreeing ranks.

    Examples:
        >>> check_noise_is_replicated("cpu")  # a single process: nothing to compare
        False
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return False
    device = torch.device(device)
    mine = torch.tensor([noise_fingerprint(device)], dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    digests = [int(digest.item()) for digest in everyone]
    if len(set(digests)) == 1:
        return True
    groups: dict[int, list[int]] = {}
    for rank, digest in enumerate(digests):
        groups.setdefault(digest, []).append(rank)
    described = "; ".join(f"ranks {ranks}" for ranks in groups.values())
    local = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    raise RuntimeError(
        f"LEAP noise is not replicated: from the same key the ranks drew different numbers ({described} agree "
        f"among themselves; rank {dist.get_rank()} runs on {local}). Data-parallel replicas would drift apart "
        "silently. CUDA's generator output depends on the GPU model, so run all ranks on identical GPUs, or "
        "turn LEAP off (leap_sigma=0)."
    )


def destroy_open_process_group() -> bool:
    """Destroys the default ``torch.distributed`` process group if the script left one open.

    ``Trainer`` never destroys the group it initialises. Left to interpreter exit, gloo's
    background threads can be torn down in the wrong order and abort a rank that finished
    cleanly, which a launcher reports as a failed job.

    Returns:
        Whether a process group was destroyed.

    Examples:
        >>> destroy_open_process_group()  # nothing to do outside a distributed run
        False
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True

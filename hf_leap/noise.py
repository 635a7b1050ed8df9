"""Counter-based keyed Gaussian noise.

Every noise value LEAP uses is a pure function of ``(seed, step, tensor_key, position)``:
no generator state has to be saved, a resumed run redraws exactly the noise of the
uninterrupted one, and every data-parallel replica draws the same values. The global torch
RNG is never touched, so dropout masks and data order are the same with and without LEAP.

A tensor's elements are grouped, in row-major order of the *global* tensor, into blocks of
``NOISE_BLOCK_SIZE`` elements; each block is drawn from a generator seeded by the block's
key. A shard that owns a contiguous range of the global tensor (FSDP2's ``Shard(0)``) draws
only the blocks it overlaps, so it receives exactly the values a single process would give
those elements: the noise does not depend on the world size.
"""

from __future__ import annotations

import torch

NOISE_BLOCK_SIZE = 1 << 16
"""Elements per independently seeded noise block. Part of the noise definition: changing it
changes every draw."""

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """One round of the splitmix64 finaliser: a bijective, well-mixing 64-bit hash."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def counter_seed(seed: int, step: int, tensor_key: int, block_index: int, shard_key: int = 0) -> int:
    """Derives the generator seed of one noise block from its coordinates.

    Python's ``hash`` is randomised per process, so the coordinates are mixed with
    splitmix64, which gives the same 64-bit value on every rank and every run.

    Args:
        seed: The user's LEAP seed.
        step: The optimizer step the noise is for.
        tensor_key: Stable index of the parameter tensor.
        block_index: Index of the block inside the (global) tensor.
        shard_key: Extra coordinate for shards whose global position is unknown
            (DeepSpeed flat partitions); 0 for replicated and position-keyed tensors.

    Returns:
        A seed in ``[0, 2**64)`` for ``torch.Generator.manual_seed``.

    Examples:
        >>> counter_seed(0, 1, 2, 3) == counter_seed(0, 1, 2, 3)
        True
        >>> counter_seed(0, 1, 2, 3) != counter_seed(0, 2, 2, 3)
        True
    """
    mixed = _splitmix64(seed & _MASK64)
    for coordinate in (step, tensor_key, block_index, shard_key):
        mixed = _splitmix64(mixed ^ (coordinate & _MASK64))
    return mixed


def fill_keyed_normal_(
    out: torch.Tensor,
    *,
    mean: float,
    std: float,
    seed: int,
    step: int,
    tensor_key: int,
    global_numel: int,
    global_offset: int = 0,
    shard_key: int = 0,
    generator: torch.Generator,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fills ``out`` with keyed Gaussian noise ``N(mean, std**2)`` for a range of a tensor.

    ``out`` holds the elements ``[global_offset, global_offset + out.numel())`` of a
    tensor with ``global_numel`` elements in row-major order. Blocks that ``out`` covers
    completely are drawn in place; partly covered ones are drawn whole into ``scratch``
    and the owned slice is copied, so a shard sees exactly the values of the full tensor.

    Args:
        out: Contiguous floating-point tensor to fill (any shape).
        mean: Mean of the distribution.
        std: Standard deviation of the distribution.
        seed: The user's LEAP seed.
        step: The optimizer step.
        tensor_key: Stable index of the parameter tensor.
        global_numel: Number of elements of the whole (unsharded) tensor.
        global_offset: Row-major position of ``out``'s first element in the whole tensor.
        shard_key: Extra key coordinate, see ``counter_seed``.
        generator: A dedicated generator on ``out``'s device; it is reseeded per block.
        scratch: Optional buffer of at least ``NOISE_BLOCK_SIZE`` elements with ``out``'s
            dtype and device, used for partly covered blocks; allocated when missing.

    Returns:
        ``out``, filled.

    Examples:
        >>> g = torch.Generator()
        >>> whole = fill_keyed_normal_(torch.empty(10), mean=0.0, std=1.0, seed=0, step=0,
        ...                            tensor_key=0, global_numel=10, generator=g)
        >>> tail = fill_keyed_normal_(torch.empty(4), mean=0.0, std=1.0, seed=0, step=0,
        ...                           tensor_key=0, global_numel=10, global_offset=6, generator=g)
        >>> torch.equal(whole[6:], tail)
        True
    """
    flat = out.view(-1)
    local_numel = flat.numel()
    if local_numel == 0:
        return out
    block_size = min(NOISE_BLOCK_SIZE, global_numel)
    first_block = global_offset // block_size
    last_block = (global_offset + local_numel - 1) // block_size
    for block_index in range(first_block, last_block + 1):
        block_start = block_index * block_size
        block_length = min(block_size, global_numel - block_start)
        take_start = max(block_start, global_offset)
        take_end = min(block_start + block_length, global_offset + local_numel)
        generator.manual_seed(counter_seed(seed, step, tensor_key, block_index, shard_key))
        destination = flat[take_start - global_offset : take_end - global_offset]
        if take_start == block_start and take_end == block_start + block_length:
            destination.normal_(mean, std, generator=generator)
            continue
        if scratch is None or scratch.numel() < block_length:
            scratch = torch.empty(block_size, dtype=out.dtype, device=out.device)
        block = scratch[:block_length]
        block.normal_(mean, std, generator=generator)
        destination.copy_(block[take_start - block_start : take_end - block_start])
    return out

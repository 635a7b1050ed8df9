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

from collections.abc import Iterator

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


def iter_keyed_normal_blocks(
    local_numel: int,
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
    scratch: torch.Tensor,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yields keyed Gaussian noise ``N(mean, std**2)`` for a range of a tensor, block by block.

    The range is the elements ``[global_offset, global_offset + local_numel)`` of a tensor
    with ``global_numel`` elements in row-major order. Each yielded ``(start, end, values)``
    covers local positions ``[start, end)``; ``values`` is a view into ``scratch`` that is
    overwritten by the next block, so consume it before advancing. Working block by block
    keeps the noise in cache and needs only one block of scratch memory.

    Args:
        local_numel: Number of elements of the local range.
        mean: Mean of the distribution.
        std: Standard deviation of the distribution.
        seed: The user's LEAP seed.
        step: The optimizer step.
        tensor_key: Stable index of the parameter tensor.
        global_numel: Number of elements of the whole (unsharded) tensor.
        global_offset: Row-major position of the range's first element in the whole tensor.
        shard_key: Extra key coordinate, see ``counter_seed``.
        generator: A dedicated generator on the scratch's device; reseeded per block.
        scratch: Floating-point buffer of at least ``min(NOISE_BLOCK_SIZE, global_numel)``
            elements.

    Yields:
        ``(start, end, values)`` with ``values.numel() == end - start``.

    Examples:
        >>> blocks = iter_keyed_normal_blocks(3, mean=0.0, std=1.0, seed=0, step=0, tensor_key=0,
        ...     global_numel=3, generator=torch.Generator(), scratch=torch.empty(3))
        >>> [(start, end) for start, end, _ in blocks]
        [(0, 3)]
    """
    if local_numel == 0:
        return
    block_size = min(NOISE_BLOCK_SIZE, global_numel)
    if scratch.numel() < block_size:
        raise ValueError(f"scratch must hold at least {block_size} elements, got {scratch.numel()}")
    first_block = global_offset // block_size
    last_block = (global_offset + local_numel - 1) // block_size
    for block_index in range(first_block, last_block + 1):
        block_start = block_index * block_size
        block_length = min(block_size, global_numel - block_start)
        take_start = max(block_start, global_offset)
        take_end = min(block_start + block_length, global_offset + local_numel)
        generator.manual_seed(counter_seed(seed, step, tensor_key, block_index, shard_key))
        block = scratch[:block_length]
        block.normal_(mean, std, generator=generator)
        yield (take_start - global_offset, take_end - global_offset,
               block[take_start - block_start : take_end - block_start])


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
) -> torch.Tensor:
    """Fills ``out`` with the keyed noise of ``iter_keyed_normal_blocks`` (a convenience for tests
    and inspection; LEAP itself consumes the blocks directly).

    Args:
        out: Contiguous floating-point tensor holding the elements
            ``[global_offset, global_offset + out.numel())`` of the whole tensor.
        mean: Mean of the distribution.
        std: Standard deviation of the distribution.
        seed: The user's LEAP seed.
        step: The optimizer step.
        tensor_key: Stable index of the parameter tensor.
        global_numel: Number of elements of the whole tensor.
        global_offset: Position of ``out``'s first element in the whole tensor.
        shard_key: Extra key coordinate, see ``counter_seed``.
        generator: A dedicated generator on ``out``'s device.

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
    scratch = torch.empty(min(NOISE_BLOCK_SIZE, global_numel), dtype=out.dtype, device=out.device)
    for start, end, values in iter_keyed_normal_blocks(
        flat.numel(), mean=mean, std=std, seed=seed, step=step, tensor_key=tensor_key, global_numel=global_numel,
        global_offset=global_offset, shard_key=shard_key, generator=generator, scratch=scratch,
    ):
        flat[start:end].copy_(values)
    return out

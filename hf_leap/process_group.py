"""Clean shutdown of the ``torch.distributed`` process group a training script leaves open."""

from __future__ import annotations

import torch.distributed as dist


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


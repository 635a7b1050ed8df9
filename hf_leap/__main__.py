"""``python -m hf_leap SCRIPT [ARGS...]``: run an unmodified HfArgumentParser script with LEAP.

Importing ``hf_leap`` registers the ``leap_*`` schedule names before the script builds its
parser, so ``--lr_scheduler_type leap_cosine`` and ``--lr_scheduler_kwargs '{"leap_sigma": 0.5}'``
work with the stock ``Trainer``. The script runs as ``__main__`` with ``sys.argv`` set to
``[SCRIPT, ARGS...]``, exactly as if it had been started directly. Works under
``torchrun ... -m hf_leap SCRIPT`` and ``accelerate launch -m hf_leap SCRIPT``; there, once the
script returns, the launcher destroys the process group the Trainer left open, because a gloo
group torn down by interpreter exit can abort the process ("terminate called without an active
exception", SIGABRT) after training succeeded.
"""

from __future__ import annotations

import os
import runpy
import sys

from .process_group import destroy_open_process_group

USAGE = """\
usage: python -m hf_leap SCRIPT [ARGS...]

Run an unmodified Hugging Face training script (HfArgumentParser + Trainer) with the
LEAP schedules registered, e.g.

  python -m hf_leap run_glue.py --lr_scheduler_type leap_cosine \\
      --lr_scheduler_kwargs '{"leap_sigma": 0.5, "leap_mode": "relative"}' ...
  torchrun --nproc_per_node 2 -m hf_leap run_glue.py ...
  accelerate launch -m hf_leap run_glue.py ...

Schedules: {names}
LEAP options inside --lr_scheduler_kwargs: leap_sigma, leap_mode (relative|absolute),
leap_seed (default 0 with a stock Trainer), leap_window [start, end], leap_clip.
"""


def main(argv: list[str] | None = None) -> int:
    """Runs ``argv[0]`` as ``__main__`` with the rest as its arguments.

    Args:
        argv: ``[SCRIPT, ARGS...]``; defaults to ``sys.argv[1:]``.

    Returns:
        The process exit status for usage errors (the script's own exit propagates).

    Examples:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        usage: python -m hf_leap SCRIPT [ARGS...]
        ...
        0
    """
    import hf_leap

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.replace("{names}", ", ".join(hf_leap.LEAP_SCHEDULE_NAMES)))
        return 0 if argv else 2
    script = argv[0]
    if not os.path.isfile(script):
        print(f"hf_leap: error: script {script!r} not found; pass the path of a Python training script "
              "(python -m hf_leap --help)", file=sys.stderr)
        return 2
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    destroy_open_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""torchrun for one stage of a study row (`study run --nproc K`): torch's own launcher, which on a stop
signal passes it to the ranks, waits for their checkpoint and then re-raises it as a traceback; here
that ending is the expected one, so it exits 130 (interrupted) in silence."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException:
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The trainer image's entrypoint: torchrun, with the exit code a preemption deserves.

torchrun forwards SIGTERM to its workers (which checkpoint and exit 143) but then exits 1 itself,
and the container's exit code is what the operator classifies: 1 means "permanent failure".
This wrapper runs torchrun as a child, forwards SIGTERM/SIGINT, and exits 143 when it was told
to stop, so a drained node or a deleted pod restarts the gang from the checkpoint.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import FrameType

SIGTERM_EXIT = 128 + signal.SIGTERM


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    child = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args])
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    return SIGTERM_EXIT if stopping and code != 0 else code


if __name__ == "__main__":
    sys.exit(main())

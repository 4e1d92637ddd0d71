"""A test hook for crash safety: `KUBEFORGE_CRASH_AT=<point>` kills the operator there with SIGKILL.

The e2e suite uses it to stop the operator between two API calls (e.g. right after it deleted a
failed attempt's Job) and proves that the restarted operator carries on without counting a
restart twice or skipping a backoff. Unset (always, outside that test) it costs one dict lookup.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)
ENV = "KUBEFORGE_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        log.warning("crash point %s reached: SIGKILL (%s)", name, ENV)
        os.kill(os.getpid(), signal.SIGKILL)

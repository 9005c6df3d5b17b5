"""Running one command: a JaxcnnError is a message and exit status 2 (traceback only
with --debug), anything unexpected a traceback and 1."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from jaxcnn import cputune
from jaxcnn.errors import DiskFull, JaxcnnError, is_disk_full


def dispatch(command: Callable[[argparse.Namespace], int], args) -> int:
    """Runs one command; JaxcnnError -> message and 2 (Interrupted: 128 + signal),
    anything else -> traceback and 1."""
    debug = getattr(args, "debug", False)
    try:
        cputune.apply()  # an invalid JAXCNN_CPU_TUNING is a usage error
        return command(args)
    except JaxcnnError as e:
        if debug:
            traceback.print_exc()
        if isinstance(e, DiskFull) and not debug:
            _quiet_abandoned_writes()
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except Exception as e:
        if is_disk_full(e):  # a run file: what was complete before is intact
            _quiet_abandoned_writes()
            print(
                f"error: the disk is full ({e}); free some space and run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return 2
        traceback.print_exc()
        return 1


def _quiet_abandoned_writes() -> None:
    """The writer tasks of a save that met a full disk may still print on their way
    out; the error line said what happened (this process ends next)."""
    from jaxcnn import checkpoint

    checkpoint.FailedWriteNoise().install()

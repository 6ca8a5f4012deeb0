"""Command-line interface. Modules here parse arguments, call library functions and print; no logic.

Each command lives in its own module and registers itself on :data:`app`. Heavy libraries
(torch, onnxruntime, openslide) are imported inside the command functions, so ``--help`` is fast
and scanner PCs without the training stack can still count.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import WbcError
from .app import app

# Command modules register themselves on import.
from . import models_cmd  # noqa: F401,E402
from . import benchmark_cmd  # noqa: F401,E402
from . import export_cmd  # noqa: F401,E402
from . import synth_cmd  # noqa: F401,E402
from . import count_cmd  # noqa: F401,E402
from . import recount_cmd  # noqa: F401,E402
from . import segment_cmd  # noqa: F401,E402
from . import explain_cmd  # noqa: F401,E402
from . import train_cmd, evaluate_cmd  # noqa: F401,E402

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one line and an exit code.

    Exit codes: 0 success; 1 an unexpected internal error; 2 bad input or usage (one line on stderr);
    3 some slides failed in a multi-slide ``count`` run (see summary.csv); 130 interrupted.
    """
    debug = os.environ.get("WBC_DEPLOY_DEBUG") not in (None, "", "0")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="wbc-deploy")
    except SystemExit as exc:  # click's standalone mode exits even on success
        if exc.code not in (0, None):
            raise
    except WbcError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        print("error: out of memory (try a smaller --batch-size)", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, never a traceback
        if debug:
            raise
        print(f"error: internal error {type(exc).__name__}: {exc} (set WBC_DEPLOY_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)

"""python -m atelier_worker: run the worker on stdin/stdout (see docs/protocol.md)."""

import sys

from .worker import main

sys.exit(main())

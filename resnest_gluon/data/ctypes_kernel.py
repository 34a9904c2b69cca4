"""One C function of our optional compiled data kernels (``resnest_gluon/ops``), loaded once with ctypes.

The data pipeline's kernels (the colour step, the region JPEG decoder) need no MXNet: ``make ops`` builds
them next to their sources, and where a library is missing, older than its source, fails to load or fails
its own check, the pipeline uses OpenCV instead, after one warning that says why.
"""

import ctypes
import logging
import os
import threading
from typing import Callable, Optional, Sequence

logger = logging.getLogger(__name__)

OPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ops")


class Kernel:
    """``symbol`` of ``ops/<library>``, built from ``ops/<sources>``; ``env=0`` switches it off.

    ``check(fn)`` (optional) runs once after loading and returns None, or why the kernel must not be used.
    """

    def __init__(
        self,
        library: str,
        sources: Sequence[str],
        symbol: str,
        argtypes: Sequence,
        env: str,
        what: str,
        check: Optional[Callable[[Callable], Optional[str]]] = None,
    ):
        self.library = os.path.join(OPS_DIR, library)
        self.sources = [os.path.join(OPS_DIR, source) for source in sources]
        self.env, self._what, self._check = env, what, check
        self._symbol, self._argtypes = symbol, list(argtypes)
        self._lock = threading.Lock()
        self._fn, self._error, self._tried = None, None, False

    def _why_not(self) -> Optional[str]:
        if not os.path.isfile(self.library):
            return f"{self.library} is not built: run `make ops` (or python -m resnest_gluon.ops build)"
        built = os.path.getmtime(self.library)
        if any(os.path.isfile(source) and built < os.path.getmtime(source) for source in self.sources):
            return f"{self.library} is older than its sources: rebuild it with `make ops`"
        return None

    def _load(self) -> None:
        error = self._why_not()
        if error is None:
            try:
                fn = getattr(ctypes.CDLL(self.library), self._symbol)
            except (OSError, AttributeError) as exc:
                error = f"{self.library} does not load ({exc}); rebuild it with `make ops` or remove it"
            else:
                fn.restype, fn.argtypes = ctypes.c_int, self._argtypes
                error = self._check(fn) if self._check is not None else None
                if error is None:
                    self._fn = fn
        if error:
            logger.warning("%s not in use (OpenCV instead): %s", self._what, error)
        self._error = error

    def available(self) -> bool:
        """Loads the library once (thread-safe); True when the function can run. False, with one warning
        saying why, when it is missing, stale, does not load or fails its check, and while ``env`` is ``0``
        (read at each call: tests and benchmarks switch to OpenCV with it)."""
        return os.environ.get(self.env) != "0" and self.loaded()

    def loaded(self) -> bool:
        """Whether the function loaded and passed its check (tried once, thread-safe), whatever ``env``
        says."""
        if not self._tried:
            with self._lock:
                if not self._tried:
                    self._load()
                    self._tried = True
        return self._fn is not None

    def load_error(self) -> Optional[str]:
        """Why the kernel is not in use (None when it is, or has not been tried yet)."""
        if os.environ.get(self.env) == "0":
            return f"switched off by {self.env}=0"
        return self._error

    def __call__(self, *args) -> int:
        return self._fn(*args)

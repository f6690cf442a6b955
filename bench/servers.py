"""The storage servers of scripts/services.sh, as the test suite sees them: their addresses
(``SERVICES``) and the S3 test bucket, for the benchmarks that share those servers.

tests/ is not an installed package, so its conftest.py is loaded here by path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_CONFTEST = Path(__file__).resolve().parent.parent / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("cloudcote_test_conftest", _CONFTEST)
assert _spec is not None and _spec.loader is not None
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)

S3_TEST_BUCKET: str = _conftest.S3_TEST_BUCKET
SERVICES: dict[str, str] = _conftest.SERVICES
ensure_test_buckets = _conftest.ensure_test_buckets

"""The test suite, a package so that its helpers import by name from the repo root.

``from tests.reference import ...`` (the one-at-a-time reference, also used by ``python -m benchmarks.benchmark``),
``tests.toy_models`` and ``tests.fixtures``. Every subfolder is a package too: pytest then imports each test file
by its dotted name under ``tests`` (no ``sys.path`` changes).
"""

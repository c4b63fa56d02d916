"""The test suite; `tests.support` holds what many tests build."""

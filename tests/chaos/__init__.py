"""The standing fault suite (#25): the same faults many times, judged from the outside.

`python -m tests.chaos` runs it (see docs/reliability.md); `test_short.py` runs a
short version in CI.
"""

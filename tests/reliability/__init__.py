"""Reliability tests (issue 6): bad input, fuzzing of the parsers, and security properties."""

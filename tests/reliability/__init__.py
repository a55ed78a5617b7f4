"""Reliability tests: bad input, fuzzing of the parsers, and security properties."""

"""The `data` stage: quality filters, exact and near-duplicate removal and PII redaction on Ray Data.

The algorithms live in small modules (text, filters, dedup, minhash, pii) that import only numpy and the
standard library at module level, so the spec and the CLI can import them without starting Ray.
"""

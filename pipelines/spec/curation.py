"""Curation configs used by the `data` stage. PLACEHOLDER: the data-curation work replaces this file."""

from __future__ import annotations

from pipelines.spec.base import Model


class QualityConfig(Model):
    pass


class MinHashConfig(Model):
    pass


class PIIConfig(Model):
    pass

"""Data layer: records, manifests, readers, safe image loading, splits, audits, synthetic data."""

from entrep.data.records import Dataset, Record, read_manifest, write_manifest

__all__ = ["Dataset", "Record", "read_manifest", "write_manifest"]

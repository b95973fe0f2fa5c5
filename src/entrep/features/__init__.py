"""Features: the content-addressed cache (:mod:`.cache`), the extractor (:mod:`.extractor`, the only
path from images to features) and embeddings export (:mod:`.export`)."""

from entrep.features.cache import CacheError, FeatureCache, default_cache_root, pixel_key, text_key
from entrep.features.extractor import Extractor

__all__ = ["CacheError", "Extractor", "FeatureCache", "default_cache_root", "pixel_key", "text_key"]

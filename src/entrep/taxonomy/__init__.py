"""Class taxonomies: fine classes, official ids, coarse groups, mirror pairs, prompts, synonyms.

The ENT taxonomy of the ENTRep challenge (``ent.yaml`` in this package) is the
default: ``Taxonomy.ent()``, ``load_taxonomy("ent")`` or the constant ``ENT``.
A user's own taxonomy comes from a small YAML/JSON file (:func:`load_taxonomy`,
the same parser as the built-in file) or is inferred from class-folder names
(:func:`infer_taxonomy`).
"""

from entrep.taxonomy.core import Taxonomy, TaxonomyError, label_key
from entrep.taxonomy.loader import BUILTIN, builtin_taxonomy, infer_taxonomy, load_taxonomy

#: The built-in ENT taxonomy (7 classes, official ids, 4 groups, 2 mirror pairs).
ENT = builtin_taxonomy("ent")

__all__ = ["BUILTIN", "ENT", "Taxonomy", "TaxonomyError", "builtin_taxonomy", "infer_taxonomy", "label_key",
           "load_taxonomy"]

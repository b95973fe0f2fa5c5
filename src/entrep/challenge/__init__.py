"""ENTRep challenge submissions: :mod:`.format` (pure: query files, answer checks, zips) and
:mod:`.tracks` (tracks 1-3 answered through the model and retrieval.search's public functions)."""

from entrep.challenge.format import check_submission, read_query_csv, read_submission, unique_queries, write_submission
from entrep.challenge.tracks import make_submission

__all__ = ["check_submission", "make_submission", "read_query_csv", "read_submission", "unique_queries",
           "write_submission"]

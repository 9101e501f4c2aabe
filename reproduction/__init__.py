"""Reproduction study of the papers' claims (issue 21): experiments per scale (``scales``), running
and committing trials (``runner``), pure statistics (``stats``) and the report (``report``)."""

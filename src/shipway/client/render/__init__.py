"""Rich tables and panels for the client's human output (``--json`` bypasses all of this).

- :mod:`.cells`: cell formatting (states, timestamps, durations) and table builders;
- :mod:`.records`: ``list`` tables and ``show`` views of deployments, versions and jobs;
- :mod:`.canary`: a canary's live state and analysis verdicts;
- :mod:`.diagnosis`: the panel that explains a failure;
- :mod:`.queue`: the operator view of ``shipway queue``.
"""

"""Timelines of a run: every rank's actions and phases on one clock (``train.trace``), merged into one
Chrome/Perfetto trace, compared with what the schedule predicts, and drawn by ``mimo timeline``.

- ``recorder``: records spans on one rank (no torch, nothing when tracing is off).
- ``timers``: ``Timers`` that also record each phase into the trace.
- ``files``: each rank's part, the merged ``trace.json``, and reading it back.
- ``analysis``: measured costs and idle time, the timed prediction, the comparison table (pure).
- ``plot``: the timeline PNG (matplotlib, Agg).
- ``session``: the glue the trainer calls.
"""

"""The feedback loop: from the answers people give the service to tonight's fine-tune and tomorrow's candidate.

- :mod:`training.loop.labelled`: the log's labelled items (through
  :func:`bundle.prediction_log.labelled_items`), with the commands' names for their sources;
- :mod:`training.loop.dataset`: ``python -m training dataset``, those items as fine-tuning data;
- :mod:`training.loop.nightly`: ``python -m training nightly``, fine-tune, gate, export, hand over in shadow;
- :mod:`training.loop.gates`, :mod:`training.loop.report`, :mod:`training.loop.lock`: its parts.

docs/nightly.md walks through it.
"""

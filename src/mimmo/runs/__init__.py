"""The run folder: its file contract, checkpoints and weights, evaluating and post-processing a finished run, signals
(docs/run-folder.md, docs/architecture.md)."""

"""Atomic writes and JSON reading, kept under this name for existing imports; they live in
:mod:`mimmo.run_folder` (the run-folder contract)."""

from mimmo.run_folder import atomic_path, read_json, write_json_atomic, write_text_atomic

__all__ = ["atomic_path", "read_json", "write_json_atomic", "write_text_atomic"]

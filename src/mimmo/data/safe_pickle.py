"""Reading the pickle files datasets come in without running code from them.

``pickle.load`` calls whatever a file names, so a crafted batch file runs its payload on load. CIFAR's python
batches and animal-shape-mnist's files hold dicts, lists, bytes, numbers and numpy arrays only: this unpickler
admits exactly the functions that rebuild those and refuses every other global before calling it.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only the types of :data:`ALLOWED_GLOBALS` (and pickle's own plain types)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a data file (only numpy "
                                         "arrays, dicts, lists, bytes and numbers are)")
        return super().find_class(module, name)


def safe_load(file: IO[bytes], encoding: str = "ASCII") -> Any:
    """``pickle.load(file)`` restricted to the types data files hold; UnpicklingError for anything else."""
    return RestrictedUnpickler(file, encoding=encoding).load()

"""The reference implementation's model and augmentation code, loaded unmodified as a test oracle.

It lives outside the repository (../shared/reference beside the clone) and is read only by tests marked
`reference`. What it needs to run on a current Python without a GPU is set up here, for the test's duration only:
`collections.Iterable` (removed in Python 3.10), `Tensor.cuda` as an identity, a stand-in for joblib (imported
by its augmentation file, used by none of the transforms tested) and its folder on sys.path.
"""
import collections
import collections.abc
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

REFERENCE_ROOT = Path(__file__).resolve().parents[2] / "shared" / "reference"

needs_reference = [
    pytest.mark.reference,
    pytest.mark.skipif(not REFERENCE_ROOT.is_dir(),
                       reason=f"{REFERENCE_ROOT} is absent: the reference implementation is these tests' oracle"),
]


def _load_file(relative: str, module_name: str) -> types.ModuleType:
    """A reference file loaded by path under a name of its own: its CPCTrans/ and Evaluate/ folders share their
    names with this repository's packages."""
    spec = importlib.util.spec_from_file_location(module_name, REFERENCE_ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reference(monkeypatch) -> types.SimpleNamespace:
    """CPC_Trans (pretraining), LC (the classifier) and the augmentation module of the reference, runnable for the
    duration of the test that owns `monkeypatch`."""
    monkeypatch.setattr(collections, "Iterable", collections.abc.Iterable, raising=False)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda tensor, *args, **kwargs: tensor)
    monkeypatch.setitem(sys.modules, "joblib", types.SimpleNamespace(Parallel=None, delayed=None))
    monkeypatch.syspath_prepend(str(REFERENCE_ROOT))
    return types.SimpleNamespace(
        CPC_Trans=_load_file("CPCTrans/model_3d.py", "reference_model_3d").CPC_Trans,
        LC=_load_file("Evaluate/model_3d_lc.py", "reference_model_3d_lc").LC,
        augmentation=_load_file("Utils/augmentation.py", "reference_augmentation"),
    )

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
    if torch.get_num_threads() != 1:
        # A test (or an in-process command such as `iste bench`) that leaves torch on two
        # threads slows every later test: on a loaded machine each small op then waits at
        # OpenMP barriers (a tiled tiny RDN: 33 s on one thread, unfinished after 5 min on
        # two). Back to one, with a warning naming the test.
        warnings.warn(f"the test left torch with {torch.get_num_threads()} intra-op threads; "
                      "reset to 1")
        torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The tests run tiny tensors, where a second intra-op thread costs more in
    # synchronisation than it gains (and far more on a loaded machine).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_pytest(tmp_path_factory):
    # torchrun leaves a torchelastic_* folder in the temporary directory on every launch, and
    # children killed on purpose leave multiprocessing's pymp-* folders: under pytest's own
    # base folder (pruned to the last three runs) they do not pile up in the machine's /tmp.
    import os
    import tempfile

    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmpdir"))
    tempfile.tempdir = None  # gettempdir() caches its first answer
    yield
    if previous is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = previous
    tempfile.tempdir = None


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    """Three synthetic 200 x 200 HR images for training tests
    (:func:`train_helpers.synthetic_folder`), made once per test module."""
    from train_helpers import synthetic_folder

    return synthetic_folder(tmp_path_factory.mktemp("hr"))

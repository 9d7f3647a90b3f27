"""pytest set-up shared by every test file.

Under pytest-xdist (``make test`` runs two workers on a 2-core machine) each worker, and every
process it starts, uses one intra-op thread: two workers of two threads each on two cores run each
test several times slower (oversubscription), one thread each runs them side by side.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The slow tests first (stable order otherwise): pytest-xdist, handing out one test at a
    time (``--maxschedchunk 1``), starts the long ones at once on both workers and fills the gaps
    with the short ones, instead of a long test starting last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config):
    """Two-process tests start their processes by forking from a server that imported quant_mimic
    once (``QUANT_MIMIC_START_METHOD``), not a fresh interpreter each (~5 s of imports a process).
    What only the spawn start method shows (the exit of a finished process) is tested with spawn
    (tests/test_train_net.py, tests/test_user_errors.py)."""
    import torch.multiprocessing as mp

    from quant_mimic.engine import START_METHOD_ENV

    os.environ[START_METHOD_ENV] = "forkserver"
    mp.set_forkserver_preload(["quant_mimic", "tests.common"])

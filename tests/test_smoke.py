import threading

import numpy as np

import captionaura
from captionaura import _core


def test_core_imports_and_threads():
    n = captionaura.get_num_threads()
    assert n >= 1
    captionaura.set_num_threads(1)
    assert captionaura.get_num_threads() == 1
    captionaura.set_num_threads(n)


def in_new_thread(work):
    result = []
    worker = threading.Thread(target=lambda: result.append(work()))
    worker.start()
    worker.join()
    return result[0]


def test_thread_count_is_process_wide(captioner):
    """OpenMP keeps its thread count per thread: a count set on the main thread must still size the OpenMP
    teams of a caption run from a worker thread (a server's), as each compute call applies it."""
    before = captionaura.get_num_threads()
    default = in_new_thread(_core.thread_team_size)  # a fresh thread's team before any compute call there
    wanted = 1 if default > 1 else 2
    captionaura.set_num_threads(wanted)
    try:
        image = np.full((40, 56, 3), 120, np.uint8)

        def caption_then_team() -> tuple[int, int]:
            captioner.caption(image, generation=captionaura.GenerationConfig(max_new_tokens=2))
            return captionaura.get_num_threads(), _core.thread_team_size()

        assert in_new_thread(caption_then_team) == (wanted, wanted)
        # a stream decodes on a thread of its own; its per-token hook runs there
        teams = []
        stream = captioner.text.generate(np.arange(3, 9, dtype=np.int32), max_new_tokens=3, min_new_tokens=3,
                                         stream=True, callback=lambda row, token: teams.append(
                                             _core.thread_team_size()))
        assert len(list(stream)) == 3 and teams == [wanted] * 3
    finally:
        captionaura.set_num_threads(before)


IMPORT_THREADS = """
import os, sys
import numpy
before = len(os.listdir("/proc/self/task"))
import captionaura
print(len(os.listdir("/proc/self/task")) - before, os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def test_import_starts_no_openblas_thread_pool_and_leaves_the_environment_alone():
    """The core's OpenBLAS runs single-threaded under our OpenMP threads; its pool, started at load, would only
    slow its calls. Loading the extension starts no thread, and the user's OPENBLAS_NUM_THREADS is as it was."""
    import os
    import subprocess
    import sys

    for value in (None, "3"):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if value:
            env["OPENBLAS_NUM_THREADS"] = value
        out = subprocess.run([sys.executable, "-c", IMPORT_THREADS], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        started, after = out.stdout.split()
        assert after == str(value)
        if value is None:
            assert started == "0"

"""The speed-of-light probes the benchmarks divide by (csrc/cpu/profile.c): what they must do, not how fast."""

import os
import subprocess
import sys

import pytest

from captionaura import _core

READ_PROBE_RESIDENT = """
import captionaura as ca
from captionaura import _core

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

before = rss("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident size
gbs = _core.read_bandwidth_gbs(96, 1)
print(rss("VmHWM") - before, gbs)
"""


def test_read_probe_streams_from_memory_it_wrote():
    """The read probe must stream from real pages. Untouched pages all map the kernel's shared zero page, which the
    caches serve: the probe then reported 116-163 GB/s on a machine that streams about 33, and its resident peak
    grew by nothing. It must grow by the buffer (to the kernel's lazily counted resident pages: 90%)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak resident memory cannot be reset here (/proc/self/clear_refs)")
    proc = subprocess.run([sys.executable, "-c", READ_PROBE_RESIDENT], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    growth, gbs = proc.stdout.split()
    assert int(growth) >= 0.9 * (96 << 20), growth
    assert float(gbs) > 0


def test_probes_refuse_bad_arguments():
    with pytest.raises(ValueError, match="mib must be positive"):
        _core.read_bandwidth_gbs(0, 1)
    with pytest.raises(ValueError, match="positive"):
        _core.read_bandwidth_gbs(1, 0)
    with pytest.raises(ValueError, match="reps must be positive"):
        _core.fma_peak_gflops(False, 0)

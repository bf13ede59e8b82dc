"""What machine a benchmark ran on, for the reports: every time a benchmark states names its CPU and cores."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """``<CPU model>, <N> cores``."""
    return f"{cpu_name()}, {os.cpu_count()} cores"

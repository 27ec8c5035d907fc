"""What reading the alarm and throttle files costs, against a sample read and a whole /metrics render.

    .venv/bin/python bench/bench_alarms.py [--board agx_orin] [--reads 5000]

The flags are read when a scrape renders (or /api/v1/alarms asks), not in the sampling loop: this prints
the three costs side by side, measured in one process on the same sysfs tree, interleaved so that a
machine's load moves them together.  What matters is their ratios.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporter.collector import PowerCollector  # noqa: E402
from exporter.layers import LayerBoard  # noqa: E402
from exporter.sampler import Sampler  # noqa: E402
from exporter.sources import hwmon  # noqa: E402
from tests.support.sysfs_boards import BOARD_NAMES, build_board  # noqa: E402


def timed(call, reads: int) -> float:
    """Median microseconds per call over ``reads`` calls, in ten batches."""
    batch = max(1, reads // 10)
    medians = []
    for _ in range(10):
        start = time.perf_counter()
        for _ in range(batch):
            call()
        medians.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(medians)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="agx_orin", choices=BOARD_NAMES)
    parser.add_argument("--reads", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = build_board(os.path.join(tmp, "sys"), args.board)
        time.sleep(2 * hwmon._ValueFiles.SETTLED_S)  # let the files be held open, as on a running board
        source = hwmon.make_source(None, sysfs_root=str(tree.root))
        board = source.read_alarms()
        files = len(board.alarms) + len(board.current_limits) + len(board.oc_events) \
            + len(board.oc_throttle_enabled) + len(board.cooling)
        sampler = Sampler(source)  # not started: render() reads the alarms, the snapshot is empty
        collector = PowerCollector(sampler, LayerBoard())
        sample_us = timed(source.read, args.reads)
        alarms_us = timed(source.read_alarms, args.reads)
        render_us = timed(collector.render, args.reads // 10)
        source.close()
    print("board %s: %d alarm/limit/throttle files, %d power value files"
          % (args.board, files, len(source._files.paths)))
    print("one sample read      %8.1f us" % sample_us)
    print("alarm files read     %8.1f us  (%.1fx a sample read)" % (alarms_us, alarms_us / sample_us))
    print("whole /metrics render %7.1f us  (alarm read is %.1f %% of it)" % (render_us, 100 * alarms_us / render_us))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sum the event-loop stalls bench/probe/sitecustomize.py recorded, for a window of time.

    python bench/probe/report.py DIR [START-HH:MM:SS SECONDS]
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    directory = Path(sys.argv[1])
    start = end = None
    if len(sys.argv) == 4:
        day = time.strftime("%Y-%m-%d ")
        start = time.mktime(time.strptime(day + sys.argv[2], "%Y-%m-%d %H:%M:%S"))
        end = start + float(sys.argv[3])
    for path in sorted(directory.glob("stalls-*.txt")):
        count, longest, total = Counter[str](), dict[str, float](), Counter[str]()
        lines = path.read_text().splitlines()
        for line in lines[1:]:
            when, took, what = line.split(" ", 2)
            if start is not None and end is not None and not start <= float(when) <= end:
                continue
            count[what] += 1
            total[what] += float(took)  # type: ignore[assignment]
            longest[what] = max(longest.get(what, 0.0), float(took))
        print(f"{path.name}: {lines[0]}")
        for what, n in count.most_common(15):
            print(f"  {n:5d} stalls, longest {longest[what]:6.1f} ms, {total[what]:7.0f} ms in"
                  f" all: {what}")


if __name__ == "__main__":
    main()

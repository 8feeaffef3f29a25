"""Recording overhead: bytes on disk and CPU per MiB of terminal output, against the baseline
of appending the raw bytes to a file (what `script` does).

    .venv/bin/python bench/recording.py [--mib 64] [--chunk 4096]

Terminal output is a realistic mix (log lines, ANSI colour codes, some UTF-8), fed in chunks
as the relay would. Writes bench/results/recording-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from broker.recording import AsciicastWriter, Flusher

RESULTS = Path(__file__).resolve().parent / "results"


def terminal_output(mib: int) -> bytes:
    rng = random.Random(7)
    words = ["pump", "rate", "ml/h", "OK", "alarm", "battery", "firmware", "Größe", "µg",
             "\x1b[32mPASS\x1b[0m", "\x1b[1;31mFAIL\x1b[0m", "2026-11-24T09:00:00Z"]
    out = bytearray()
    while len(out) < mib << 20:
        out += (" ".join(rng.choice(words) for _ in range(12)) + "\r\n").encode()
    return bytes(out[: mib << 20])


def cpu(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    fn()
    return time.process_time() - start


async def main(mib: int, chunk: int) -> dict[str, object]:
    data = terminal_output(mib)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    with TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "raw.bin"

        def raw() -> None:
            with raw_path.open("wb") as handle:
                for piece in chunks:
                    handle.write(piece)

        flusher = Flusher()
        cast_path = Path(tmp) / "term.cast"

        def cast() -> None:
            writer = AsciicastWriter(cast_path, width=120, height=40, flusher=flusher)
            for piece in chunks:
                writer.output(piece)
            writer.close()

        raw_cpu, cast_cpu = cpu(raw), cpu(cast)
        await flusher.stop()
        raw_bytes, cast_bytes = raw_path.stat().st_size, cast_path.stat().st_size
    return {
        "benchmark": "recording", "when": datetime.now(UTC).isoformat(),
        "output_mib": mib, "chunk_bytes": chunk,
        "summary": {
            "disk_bytes_per_mib": round(cast_bytes / mib),
            "disk_vs_raw": round(cast_bytes / raw_bytes, 2),
            "cpu_ms_per_mib": round(cast_cpu * 1000 / mib, 2),
            "raw_cpu_ms_per_mib": round(raw_cpu * 1000 / mib, 2),
            "cpu_vs_raw": round(cast_cpu / max(raw_cpu, 1e-9), 1),
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args()
    result = asyncio.run(main(args.mib, args.chunk))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"recording-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"written to {out}")

"""A fleet of reader processes: each iterates the whole map and makes point
reads of the keys it saw, continuously, and prints its rates every second
and at the end. Readers never send a message and never wait for the
writer; they work on any map, whatever its keys.

    shmmap serve orders &
    python clients/writer.py orders --duration 30 &
    python clients/readers.py orders --processes 4 --duration 10

Ctrl-C stops every reader and exits 130.
"""
import argparse
import multiprocessing as mp
import random
import signal
import sys
import time

import shmmap


def reader(name: str, index: int, duration: float, gets_per_scan: int) -> str:
    rng = random.Random(index)
    scans = gets = hits = items = 0
    scan_time = get_time = 0.0
    started = last_report = time.monotonic()
    with shmmap.connect(name) as m:
        while time.monotonic() - started < duration:
            t = time.perf_counter()
            keys = [k for k, _ in m.items()]          # one consistent snapshot
            t2 = time.perf_counter()
            for key in rng.choices(keys, k=gets_per_scan) if keys else ():
                hits += m.get(key) is not None      # may be deleted since the scan
            get_time += time.perf_counter() - t2
            scan_time += t2 - t
            scans, items = scans + 1, items + len(keys)
            gets += gets_per_scan if keys else 0
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                print(f"reader {index}: {items / max(scan_time, 1e-9):,.0f} items/s iterated, "
                      f"{gets / max(get_time, 1e-9):,.0f} gets/s", flush=True)
    return (f"reader {index}: {scans} scans of {items / max(scans, 1):,.0f} keys "
            f"(mean {scan_time / max(scans, 1) * 1000:.2f} ms, {items / max(scan_time, 1e-9):,.0f} "
            f"items/s), {gets:,} gets ({gets / max(get_time, 1e-9):,.0f}/s, {hits:,} found)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="the map (served by `shmmap serve NAME`)")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--duration", type=float, default=10, help="seconds")
    p.add_argument("--gets", type=int, default=1000, help="point reads after each scan")
    args = p.parse_args()
    try:
        shmmap.connect(args.name).close()           # fail early: no such map, no daemon
    except shmmap.ShmmapError as exc:
        raise SystemExit(f"readers: {exc}") from None
    # The terminal sends Ctrl-C's SIGINT to every process of the group; the
    # readers, started while it is ignored, keep ignoring it (no traceback from
    # each), and this process stops them.
    sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    pool = mp.get_context("spawn").Pool(args.processes)
    signal.signal(signal.SIGINT, sigint)
    try:
        jobs = [pool.apply_async(reader, (args.name, i, args.duration, args.gets))
                for i in range(args.processes)]
        for job in jobs:
            print(job.get(), flush=True)
    except KeyboardInterrupt:
        print("readers: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        pool.terminate()
        pool.join()


if __name__ == "__main__":
    main()

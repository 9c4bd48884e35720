"""A fleet of reader processes: each iterates the whole map and makes point
reads, continuously, and prints its rates. Readers never send a message
and never wait for the writer.

    shmmap serve orders &
    python clients/writer.py orders --duration 30 &
    python clients/readers.py orders --processes 4
"""
import argparse
import multiprocessing as mp
import random
import time

import shmmap


def reader(name: str, duration: float, gets_per_scan: int) -> str:
    m = shmmap.connect(name)
    rng = random.Random()
    scans = gets = 0
    scan_time = 0.0
    started = time.monotonic()
    while time.monotonic() - started < duration:
        t = time.perf_counter()
        n = sum(1 for _ in m.items())             # one consistent snapshot
        scan_time += time.perf_counter() - t
        scans += 1
        for _ in range(gets_per_scan):
            m.get(rng.randrange(max(n, 1)))
        gets += gets_per_scan
    m.close()
    return (f"{scans} full scans (mean {scan_time / max(scans, 1) * 1000:.1f} ms), "
            f"{gets / duration:,.0f} gets/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--gets", type=int, default=1000, help="point reads between scans")
    args = p.parse_args()
    with mp.get_context("spawn").Pool(args.processes) as pool:
        jobs = [pool.apply_async(reader, (args.name, args.duration, args.gets))
                for _ in range(args.processes)]
        for i, job in enumerate(jobs):
            print(f"reader {i}: {job.get()}")


if __name__ == "__main__":
    main()

"""A writer: updates, inserts and deletes keys of a map in batches, as fast
as it can or at --rate batches per second, and prints its rate.

    shmmap serve orders &
    python clients/writer.py orders --keys 100000 --batch 100
"""
import argparse
import random
import time

import shmmap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=100, help="writes per atomic batch")
    p.add_argument("--rate", type=float, default=0, help="batches per second (0: no limit)")
    p.add_argument("--duration", type=float, default=10)
    args = p.parse_args()
    m = shmmap.connect(args.name)
    rng = random.Random()
    writes, started = 0, time.monotonic()
    while time.monotonic() - started < args.duration:
        t = time.monotonic()
        with m.batch() as b:
            for _ in range(args.batch):
                k = rng.randrange(args.keys)
                if rng.random() < 0.1:
                    del b[k]
                else:
                    b[k] = {"v": rng.random(), "t": t}
        writes += args.batch
        if args.rate:
            time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - t)))
    elapsed = time.monotonic() - started
    print(f"{writes / elapsed:,.0f} writes/s in batches of {args.batch}; map has {len(m):,} keys")
    m.close()


if __name__ == "__main__":
    main()

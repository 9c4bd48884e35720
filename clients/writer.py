"""A writer: inserts, updates and deletes keys 0..KEYS-1 of a map in atomic
batches, as fast as it can or at --rate writes per second, and prints its
rate every second and at the end.

    shmmap serve orders &
    python clients/writer.py orders --keys 100000 --batch 100 --rate 50000

Ctrl-C stops it early: it prints what it did and exits 130.
"""
import argparse
import random
import sys
import time

import shmmap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="the map (served by `shmmap serve NAME`)")
    p.add_argument("--keys", type=int, default=100_000, help="key space: ints 0..KEYS-1")
    p.add_argument("--batch", type=int, default=100, help="writes per atomic batch")
    p.add_argument("--rate", type=float, default=0, help="writes per second (0: no limit)")
    p.add_argument("--delete-ratio", type=float, default=0.1, help="share of deletes")
    p.add_argument("--duration", type=float, default=10, help="seconds")
    args = p.parse_args()
    try:
        m = shmmap.connect(args.name)
    except shmmap.ShmmapError as exc:
        raise SystemExit(f"writer: {exc}") from None
    rng = random.Random()
    writes = deletes = 0
    started = last_report = time.monotonic()
    interrupted = False
    with m:
        try:
            while (now := time.monotonic()) - started < args.duration:
                if args.rate:       # pace against the start, so that no lateness accumulates
                    ahead = started + writes / args.rate - now
                    if ahead > 0:
                        time.sleep(ahead)
                with m.batch() as b:                    # readers see all of it or none
                    for _ in range(args.batch):
                        k = rng.randrange(args.keys)
                        if rng.random() < args.delete_ratio:
                            del b[k]
                            deletes += 1
                        else:
                            b[k] = {"v": rng.random(), "t": now}
                writes += args.batch
                if now - last_report >= 1.0:
                    last_report = now
                    print(f"{writes / (now - started):,.0f} writes/s, {len(m):,} keys",
                          flush=True)
        except KeyboardInterrupt:       # Ctrl-C: stop early, say what was done
            interrupted = True
        elapsed = time.monotonic() - started
        print(f"{writes:,} writes ({deletes:,} deletes) in {elapsed:.1f} s: "
              f"{writes / elapsed:,.0f} writes/s in batches of {args.batch}; "
              f"the map has {len(m):,} keys")
    if interrupted:
        print("writer: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

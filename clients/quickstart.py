"""The shortest complete use of shmmap: start a daemon, write, read,
iterate, batch, inspect, stop.

    python clients/quickstart.py [NAME]       # NAME defaults to "quickstart"

The daemon runs as a child process for as long as the ``with`` block lasts;
``shmmap serve NAME`` in another terminal does the same for as long as you
like. Everything it created is removed at the end.
"""
import sys

import shmmap


def main(name: str = "quickstart") -> None:
    # The daemon (or: shmmap serve NAME), then a client: any process of this host.
    with shmmap.Daemon(name), shmmap.connect(name) as m:
        m["greeting"] = "hello"               # a write: acknowledged when visible
        m.update({f"user:{i}": {"id": i, "score": i * 1.5} for i in range(1000)})
        print("greeting:", m["greeting"])     # a read: shared memory, no message
        print("user:7:", m["user:7"])
        with m.batch() as b:                  # readers see both or neither
            b["user:1"] = {"id": 1, "score": 99.0}
            del b["user:2"]
        print("compare_and_swap:", m.compare_and_swap("greeting", "hello", "hi"))
        print("load_or_store:", m.load_or_store("counter", 0))
        total = sum(v["score"] for k, v in m.items() if k.startswith("user:"))
        print(f"{len(m)} keys, total score {total}")  # items(): one snapshot
        st = m.stats()
        print(f"generation {st['generation']}, promotions {st['promotions']}, "
              f"misses {st['misses']}")


if __name__ == "__main__":
    main(*sys.argv[1:2])

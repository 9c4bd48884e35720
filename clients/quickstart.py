"""The shortest complete use of shmmap: start a daemon, write, read,
iterate, batch, inspect, stop. Run: python clients/quickstart.py"""
import shmmap

with shmmap.Daemon("quickstart") as daemon:      # `shmmap serve quickstart` does the same
    m = shmmap.connect("quickstart")
    m["greeting"] = "hello"
    m.update({f"user:{i}": {"id": i, "score": i * 1.5} for i in range(1000)})
    print("greeting:", m["greeting"])
    print("user:7:", m["user:7"])
    with m.batch() as b:                          # readers see both or neither
        b["user:1"] = {"id": 1, "score": 99.0}
        del b["user:2"]
    print("compare_and_swap:", m.compare_and_swap("greeting", "hello", "hi"))
    total = sum(v["score"] for k, v in m.items() if k.startswith("user:"))
    print(f"{len(m)} keys, total score {total}")
    st = m.stats()
    print(f"generation {st['generation']}, promotions {st['promotions']}, "
          f"misses {st['misses']}")
    m.close()

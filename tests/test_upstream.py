"""serve --upstream: the daemon as a host-wide near cache of a Redis key
range, against a real redis-server of each test's own (conftest's
redis_server). Readers in other processes see external writes, Redis sees
the map's writes, and after a lost connection or a restarted server the
copy converges to Redis' data with no stale key left."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, Iterator

import pytest

import shmmap
from shmmap import InvalidRequestError, OutcomeUnknownError, UpstreamUnavailableError

DEADLINE = 30.0         # seconds any convergence may take on a loaded machine


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Polls check() until it returns something true; fails naming what
    after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def state(m: shmmap.SharedMap) -> str:
    return str(m.stats()["upstream"]["state"])


@pytest.fixture
def served(map_name: str, redis_server: Any) -> Iterator[Callable[..., shmmap.SharedMap]]:
    """serve(**options) starts the map's daemon from redis_server, with
    --prefix p: unless told otherwise, and returns a client once the copy
    is live. Everything is stopped after the test."""
    daemons: list[shmmap.Daemon] = []
    maps: list[shmmap.SharedMap] = []

    def serve(**options: Any) -> shmmap.SharedMap:
        options.setdefault("prefix", ["p:"])
        d = shmmap.Daemon(map_name, upstream=redis_server.url, **options)
        daemons.append(d.start())
        m = shmmap.connect(map_name)
        maps.append(m)
        wait_for("live copy", lambda: state(m) == "live")
        return m

    try:
        yield serve
    finally:
        for m in maps:
            m.close()
        for d in daemons:
            d.stop()


def in_child(map_name: str, body: str) -> str:
    """Runs body in another process with m, the map, connected; its
    stdout. The body fails the test by raising."""
    code = "import json, sys, time\nimport shmmap\n" \
           f"m = shmmap.connect({map_name!r})\n" + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=DEADLINE * 2)
    assert done.returncode == 0, done.stderr
    return done.stdout


# A child's wait until m holds exactly `want` (a JSON object of str values).
_WAIT_FOR_CONTENT = """
deadline = time.monotonic() + {deadline}
want = json.loads({want!r})
while True:
    got = {{k: v.decode() for k, v in m.items()}}
    if got == want:
        break
    assert time.monotonic() < deadline, f"map holds {{got}}, not {{want}}"
    time.sleep(0.01)
print("seen")
"""


def child_sees(map_name: str, want: dict[str, str]) -> None:
    out = in_child(map_name, _WAIT_FOR_CONTENT.format(deadline=DEADLINE, want=json.dumps(want)))
    assert out.strip() == "seen"


def test_loads_the_range_and_follows_external_writes(served: Any, redis_server: Any,
                                                     map_name: str) -> None:
    r = redis_server.client()
    r.mset({"p:a": "1", "p:b": "2", "other:c": "3"})
    r.rpush("p:list", "x")
    m = served()
    assert dict(m.items()) == {"p:a": b"1", "p:b": b"2"}
    assert m.stats()["upstream"]["skipped_keys"] == {"list": 1}
    child_sees(map_name, {"p:a": "1", "p:b": "2"})
    r.set("p:a", "10")
    r.delete("p:b")
    r.set("p:new", "n")
    r.set("other:d", "4")               # outside the range: not in the map
    child_sees(map_name, {"p:a": "10", "p:new": "n"})
    up = m.stats()["upstream"]
    assert up["invalidations"] >= 1 and up["keys_refetched"] >= 3
    assert up["stale"] is False and up["last_sync"] > 0


def test_writes_reach_redis_first(served: Any, redis_server: Any) -> None:
    r = redis_server.client()
    m = served()
    m["p:x"] = b"1"
    assert r.get("p:x") == b"1" and m["p:x"] == b"1"
    with m.batch() as b:
        b["p:y"] = b"2"
        b["p:z"] = b"3"
        del b["p:x"]
    assert r.mget("p:x", "p:y", "p:z") == [None, b"2", b"3"]
    assert dict(m.items()) == {"p:y": b"2", "p:z": b"3"}
    m.update({"p:u": b"4", "p:v": b"5"})
    assert r.get("p:u") == b"4" and m["p:v"] == b"5"
    del m["p:u"]
    assert r.exists("p:u") == 0 and "p:u" not in m
    with pytest.raises(KeyError):
        del m["p:u"]
    assert m.swap("p:v", b"6") == (b"5", True)
    assert r.get("p:v") == b"6"
    assert m.stats()["upstream"]["writes"] >= 6


def test_conditional_writes_test_redis_own_value(served: Any, redis_server: Any) -> None:
    """compare_and_swap and its kin WATCH the key, test what Redis holds
    (by Python's equality, as the map does), and write in a MULTI."""
    r = redis_server.client()
    r.set("p:c", '{"n": 1}')
    r.rpush("p:list", "x")
    m = served(decode="json")
    assert m.compare_and_swap("p:c", {"n": 1.0}, {"n": 2}) is True
    assert json.loads(r.get("p:c")) == {"n": 2}          # 1.0 == 1: swapped, still a string
    assert m["p:c"] == {"n": 2}
    assert m.compare_and_swap("p:c", {"n": 1}, {"n": 3}) is False
    assert json.loads(r.get("p:c")) == {"n": 2}
    r.set("p:c", '"external"')                           # the copy may lag; Redis decides
    assert m.compare_and_swap("p:c", "external", "mine") is True
    assert r.get("p:c") == b'"mine"' and m["p:c"] == "mine"
    assert m.load_or_store("p:c", "other") == ("mine", True)
    assert m.load_or_store("p:new", [1]) == ([1], False)
    assert r.get("p:new") == b"[1]" and m["p:new"] == [1]
    assert m.compare_and_delete("p:new", [2]) is False and r.exists("p:new") == 1
    assert m.compare_and_delete("p:new", [1]) is True and r.exists("p:new") == 0
    assert "p:new" not in m
    assert m.compare_and_swap("p:absent", 1, 2) is False and r.exists("p:absent") == 0
    with pytest.raises(InvalidRequestError, match="holds a list"):
        m.load_or_store("p:list", 1)
    assert r.lrange("p:list", 0, -1) == [b"x"]


def test_read_your_writes_from_another_process(served: Any, redis_server: Any,
                                               map_name: str) -> None:
    served()
    # Each write is read back at once by its own process: the write
    # returned only once the map had it.
    in_child(map_name, """
        for i in range(200):
            m["p:n"] = str(i).encode()
            got = m["p:n"]
            assert got == str(i).encode(), (i, got)
    """)
    assert redis_server.client().get("p:n") == b"199"
    in_child(map_name, 'assert m["p:n"] == b"199", m["p:n"]')


def test_refused_writes_change_nothing(served: Any, redis_server: Any) -> None:
    r = redis_server.client()
    m = served(prefix=["p:", "q:"])
    with pytest.raises(InvalidRequestError, match="outside the map's range"):
        m["z:1"] = b"1"
    with pytest.raises(InvalidRequestError, match="outside"):
        m.update({"p:ok": b"1", "z:bad": b"2"})       # all or nothing
    with pytest.raises(InvalidRequestError, match="str or bytes"):
        m[7] = b"1"
    with pytest.raises(InvalidRequestError, match="bytes or a dict"):
        m["p:s"] = "text"                             # no --decode: bytes
    with pytest.raises(InvalidRequestError, match="not supported"):
        m.clear()
    assert r.keys("*") == [] and len(m) == 0
    m["q:1"] = b"fine"
    assert r.get("q:1") == b"fine"


def test_hashes(served: Any, redis_server: Any, map_name: str) -> None:
    r = redis_server.client()
    r.hset("p:h", mapping={"f": "1", "g": "2"})
    m = served()
    assert m["p:h"] == {"f": b"1", "g": b"2"}
    r.hset("p:h", "f", "9")
    r.hdel("p:h", "g")
    wait_for("the hash's change", lambda: m["p:h"] == {"f": b"9"})
    m["p:w"] = {"a": b"x", b"\xff": b"y"}           # a field that is not UTF-8 stays bytes
    assert r.hgetall("p:w") == {b"a": b"x", b"\xff": b"y"}
    assert m["p:w"] == {"a": b"x", b"\xff": b"y"}
    m["p:w"] = {"only": b"z"}                         # replaces the hash: no field left over
    assert r.hgetall("p:w") == {b"only": b"z"}
    with pytest.raises(InvalidRequestError, match="empty hash"):
        m["p:w"] = {}
    in_child(map_name, 'assert m["p:w"] == {"only": b"z"}, m["p:w"]')


def test_decode_json(served: Any, redis_server: Any) -> None:
    r = redis_server.client()
    r.set("p:j", '{"a": [1, 2], "b": null}')
    r.set("p:bad", "not json")
    r.hset("p:h", "n", "3")
    m = served(decode="json")
    assert m["p:j"] == {"a": [1, 2], "b": None}
    assert m["p:h"] == {"n": 3}
    assert "p:bad" not in m and m.stats()["upstream"]["skipped_keys"] == {"undecodable": 1}
    m["p:k"] = [1, "x", 2.5]
    assert json.loads(r.get("p:k")) == [1, "x", 2.5] and m["p:k"] == [1, "x", 2.5]
    with pytest.raises(InvalidRequestError, match="cannot be written"):
        m["p:k"] = b"bytes are no JSON"
    m["p:h"] = {"n": 4, "m": [5]}                     # a hash stays a hash
    assert r.hgetall("p:h") == {b"n": b"4", b"m": b"[5]"}
    m["p:d"] = {"n": 6}                               # a new key: JSON can write it
    assert r.get("p:d") == b'{"n":6}' and m["p:d"] == {"n": 6}
    r.set("p:bad", "[3]")                             # decodable now
    wait_for("the fixed key", lambda: m.get("p:bad") == [3])
    assert m.stats()["upstream"]["skipped_keys"] == {}


def test_expiry_arrives_as_invalidation(served: Any, redis_server: Any) -> None:
    r = redis_server.client()
    m = served()
    r.set("p:t", "1", px=300)
    r.set("p:stays", "1")
    wait_for("the expiring key", lambda: "p:t" in m)
    wait_for("the key's expiry", lambda: "p:t" not in m)
    assert m["p:stays"] == b"1"


def test_flushall_empties_the_copy(served: Any, redis_server: Any, map_name: str) -> None:
    r = redis_server.client()
    r.mset({"p:a": "1", "p:b": "2"})
    m = served()
    r.flushall()
    r.set("p:after", "3")
    child_sees(map_name, {"p:after": "3"})
    assert m.stats()["upstream"]["resyncs"] >= 1


def _kill_tracking_connection(r: Any) -> int:
    """Kills the daemon's connection (the one with tracking on)."""
    ids = [c["id"] for c in r.client_list() if "t" in c["flags"]]
    assert len(ids) == 1, r.client_list()
    r.client_kill_filter(_id=ids[0])
    return int(ids[0])


def test_killed_connection_resyncs_by_diff(served: Any, redis_server: Any,
                                           map_name: str) -> None:
    r = redis_server.client()
    r.mset({"p:a": "1", "p:gone": "2"})
    m = served()
    # CONFIG SET to make the reconnection wait is not possible, so the
    # changes made right after the kill race the reconnection: either way
    # (seen by the resync's diff, or as invalidations after it) the copy
    # must converge.
    _kill_tracking_connection(r)
    r.delete("p:gone")
    r.set("p:a", "changed")
    r.set("p:b", "new")
    child_sees(map_name, {"p:a": "changed", "p:b": "new"})
    wait_for("a reconnection", lambda: m.stats()["upstream"]["reconnects"] >= 1)
    wait_for("the live copy", lambda: state(m) == "live")
    m["p:c"] = b"written after"
    assert r.get("p:c") == b"written after"


def test_restarted_server_with_other_data(served: Any, redis_server: Any,
                                          map_name: str) -> None:
    r = redis_server.client()
    r.mset({"p:old": "1", "p:kept": "old value"})
    m = served()
    assert m["p:old"] == b"1"
    redis_server.kill()
    wait_for("the disconnected state", lambda: state(m) == "disconnected")
    up = m.stats()["upstream"]
    assert up["stale"] is True
    assert m["p:old"] == b"1" and len(m) == 2          # readers read the last copy
    with pytest.raises(UpstreamUnavailableError, match="nothing was written"):
        m["p:new"] = b"1"
    with pytest.raises(UpstreamUnavailableError):
        del m["p:old"]
    assert in_child(map_name, """
        try:
            m["p:x"] = b"1"
        except shmmap.UpstreamUnavailableError:
            print("refused")
    """).strip() == "refused"
    redis_server.start()
    r = redis_server.client()
    r.mset({"p:kept": "new value", "p:fresh": "2"})
    child_sees(map_name, {"p:kept": "new value", "p:fresh": "2"})   # p:old gone
    wait_for("the live copy", lambda: state(m) == "live")
    assert m.stats()["upstream"]["resyncs"] >= 1
    m["p:new"] = b"1"
    assert r.get("p:new") == b"1"


def test_writes_in_flight_are_not_reported_as_made(served: Any, redis_server: Any) -> None:
    """A write the server never answered is OutcomeUnknownError or, if the
    link was found lost first, UpstreamUnavailableError: never success."""
    m = served()
    r = redis_server.client()
    r.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    try:
        with pytest.raises((OutcomeUnknownError, UpstreamUnavailableError)):
            m["p:slow"] = b"1"
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    wait_for("the live copy", lambda: state(m) == "live")


def test_the_options_go_together(map_name: str, redis_server: Any) -> None:
    with pytest.raises(shmmap.DaemonStartError, match="--prefix"):
        shmmap.Daemon(map_name, upstream=redis_server.url).start()
    with pytest.raises(shmmap.DaemonStartError, match="overlaps"):
        shmmap.Daemon(map_name, upstream=redis_server.url, prefix=["p:", "p:x"]).start()
    with pytest.raises(shmmap.DaemonStartError, match="with --upstream"):
        shmmap.Daemon(map_name, prefix=["p:"]).start()
    assert not [s for s in os.listdir("/dev/shm") if map_name in s]


def test_top_and_metrics_show_the_upstream(served: Any, redis_server: Any,
                                           map_name: str) -> None:
    import urllib.request
    r = redis_server.client()
    r.rpush("p:list", "x")
    m = served(metrics="127.0.0.1:0")
    m["p:a"] = b"1"
    text = urllib.request.urlopen(m.stats()["metrics_url"], timeout=DEADLINE).read().decode()
    assert f'shmmap_upstream_state{{map="{map_name}",state="live"}} 1.0' in text
    assert f'shmmap_upstream_state{{map="{map_name}",state="disconnected"}} 0.0' in text
    assert f'shmmap_upstream_writes_total{{map="{map_name}"}} 1.0' in text
    assert f'shmmap_upstream_skipped_keys{{kind="list",map="{map_name}"}} 1.0' in text
    done = subprocess.run([sys.executable, "-m", "shmmap", "top", map_name, "--once",
                           "--interval", "0.05"], capture_output=True, text=True,
                          timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    assert f"upstream {redis_server.url}/0 LIVE since" in done.stdout
    assert "writes 1 (failed 0)" in done.stdout and "skipped list 1" in done.stdout
    shown = subprocess.run([sys.executable, "-m", "shmmap", "top", map_name, "--once", "--json",
                            "--interval", "0.05"], capture_output=True, text=True,
                           timeout=DEADLINE)
    assert json.loads(shown.stdout)["upstream"]["state"] == "live"


def test_a_stopped_server_is_found_by_the_heartbeat(served: Any, redis_server: Any) -> None:
    """SIGSTOP: the connection stays open but nothing answers. The PING
    after a second of silence times out: the map goes stale, reads go on,
    writes are refused (or, in flight, reported as of unknown outcome)."""
    import signal
    r = redis_server.client()
    r.set("p:a", "1")
    m = served()
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        wait_for("the disconnected state", lambda: state(m) == "disconnected")
        assert m["p:a"] == b"1"
        with pytest.raises(UpstreamUnavailableError):
            m["p:a"] = b"2"
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    wait_for("the live copy", lambda: state(m) == "live")
    m["p:a"] = b"3"
    assert r.get("p:a") == b"3" and m["p:a"] == b"3"


def test_a_slow_consumer_cut_off_by_redis_resyncs(served: Any, redis_server: Any,
                                                  map_name: str) -> None:
    """Pushes pile up while the daemon is stopped, past the output buffer
    Redis allows a client: Redis drops the connection, and that is a lost
    connection like any other -- the copy converges after it."""
    import signal
    r = redis_server.client()
    # Room for the largest reply the daemon asks for (a SCAN page of 1,000
    # of these names), not for the pushes of 30 MB.
    r.config_set("client-output-buffer-limit", "normal 4mb 0 0")
    m = served()
    pid = m.stats()["pid"]
    names = [f"p:{i:06d}:" + "x" * 1000 for i in range(30_000)]
    os.kill(pid, signal.SIGSTOP)
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(0, len(names), 1000):
            pipe.mset({n: "1" for n in names[i:i + 1000]})
        pipe.execute()
        wait_for("Redis to drop the daemon's connection",
                 lambda: not [c for c in r.client_list() if "t" in c["flags"]])
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for("a reconnection", lambda: m.stats()["upstream"]["reconnects"] >= 1)
    wait_for("the whole range", lambda: state(m) == "live" and len(m) == len(names))
    assert sorted(m.keys()) == names


def test_counters_never_go_backwards(served: Any, redis_server: Any, map_name: str) -> None:
    """External writers INCR counters while a reader in another process
    reads them, and the daemon's connection is killed midway: no reader
    ever sees a counter go backwards, and once the writers stop it sees
    their final values."""
    import threading
    r = redis_server.client()
    counters = [f"p:c{i}" for i in range(8)]
    r.mset({c: 0 for c in counters})
    served()
    stop = threading.Event()

    def write() -> None:
        w = redis_server.client()
        while not stop.is_set():
            pipe = w.pipeline(transaction=False)
            for c in counters:
                pipe.incr(c)
            pipe.execute()

    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        import shmmap
        m = shmmap.connect({map_name!r})
        keys = {counters!r}
        last = dict.fromkeys(keys, 0)
        reads = 0
        for line in sys.stdin:      # each line: the final values to wait for, or "go"
            want = None if line.strip() == "go" else dict(zip(keys, map(int, line.split())))
            deadline = time.monotonic() + {DEADLINE}
            while True:
                seen = {{k: int(m[k]) for k in keys}}
                for k in keys:
                    assert seen[k] >= last[k], f"{{k}} went from {{last[k]}} to {{seen[k]}}"
                last, reads = seen, reads + 1
                if want is None or seen == want or time.monotonic() > deadline:
                    break
            print(reads if want is None or seen == want else f"stuck at {{seen}}", flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdin is not None and reader.stdout is not None
    writers = [threading.Thread(target=write) for _ in range(2)]
    try:
        try:
            for t in writers:
                t.start()
            for kill in (False, True):      # the reader reads as they write
                if kill:
                    _kill_tracking_connection(r)
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    reader.stdin.write("go\n")
                    reader.stdin.flush()
                    reader.stdout.readline()
        finally:
            stop.set()
            for t in writers:
                t.join()
        final = r.mget(counters)
        reader.stdin.write(" ".join(v.decode() for v in final) + "\n")
        reader.stdin.close()
        answer = reader.stdout.readline().strip()
        assert reader.wait(timeout=DEADLINE) == 0 and answer.isdigit(), answer
    finally:
        reader.kill()
        reader.wait()
    assert int(final[0]) > 100          # the writers did write meanwhile


def test_unix_socket_upstream(map_name: str, redis_server_binary: str, tmp_path: Any) -> None:
    import redis
    sock = tmp_path / "redis.sock"
    server = subprocess.Popen(
        [redis_server_binary, "--port", "0", "--unixsocket", str(sock), "--dir", str(tmp_path),
         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(unix_socket_path=str(sock))
        wait_for("redis-server on its socket", lambda: sock.exists() and r.ping())
        r.set("p:a", "1")
        with shmmap.Daemon(map_name, upstream=f"unix://{sock}", prefix=["p:"]) as d:
            with d.connect() as m:
                wait_for("the live copy", lambda: state(m) == "live")
                assert m.stats()["upstream"]["url"] == f"unix://{sock}/0"
                assert m["p:a"] == b"1"
                m["p:b"] = b"2"
                assert r.get("p:b") == b"2"
    finally:
        server.kill()
        server.wait()


def test_doctor_names_a_stale_near_cache(served: Any, redis_server: Any, map_name: str) -> None:
    redis_server.client().rpush("p:list", "x")
    m = served()

    def findings() -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "shmmap", "doctor", map_name, "--json",
                               "--interval", "0.05"], capture_output=True, text=True,
                              timeout=DEADLINE)
        return {f["check"]: f for f in json.loads(done.stdout)["findings"]}
    found = findings()
    assert found["upstream_skipped_keys"]["data"] == {"skipped_keys": {"list": 1}}
    assert "upstream_unreachable" not in found
    redis_server.kill()
    wait_for("the disconnected state", lambda: state(m) == "disconnected")
    found = findings()
    assert found["upstream_unreachable"]["severity"] == "problem"
    assert "disconnected since" in found["upstream_unreachable"]["problem"]


def test_concurrent_writers(served: Any, redis_server: Any, map_name: str) -> None:
    """Writes of several processes at once (sent to Redis together): each
    is made, read back by its writer, and in Redis and the map after."""
    served()
    code = textwrap.dedent(f"""
        import sys
        import shmmap
        m = shmmap.connect({map_name!r})
        me = sys.argv[1]
        for i in range(300):
            m[f"p:{{me}}:{{i % 50}}"] = str(i).encode()
            assert m[f"p:{{me}}:{{i % 50}}"] == str(i).encode()
    """)
    writers = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(4)]
    try:
        assert [p.wait(timeout=DEADLINE * 2) for p in writers] == [0] * 4
    finally:
        for p in writers:
            p.kill()
            p.wait()
    want = {f"p:{w}:{k}": str(250 + k).encode() for w in range(4) for k in range(50)}
    r = redis_server.client()
    assert dict(zip(want, r.mget(list(want)))) == want
    m = shmmap.connect(map_name)
    assert dict(m.items()) == want
    m.close()

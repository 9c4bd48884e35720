"""``shmmap doctor NAME``: looks at a map and its daemon and says, in plain
sentences with the numbers, what is wrong and what to do.

It reads what is there to read: the map's header (the daemon's pid), two
snapshots of the daemon's counters ``--interval`` apart, the reader slots,
every process's mappings (/proc/PID/maps: who still maps a superseded
generation), /dev/shm's free space, logind's configuration, the load and
the daemon's scheduler statistics. Each finding is a problem (exit 1) or a
note (worth knowing; exit 0).
"""
from __future__ import annotations

import os
import pwd
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from .._core import ffi, lib
from ..client.reader import MapReader
from ..shared import segments
from . import legacy
from ..shared.maplock import is_served
from ..shared.protocol import Op
from ..shared.slotlayout import slot_at
from .format import human_bytes, quantile, requests_between, summed

PROBLEM, NOTE = "problem", "note"
CONNECT_TIMEOUT = 5.0
# A miss rate worth a word: one lookup in ten probes the dirty table too.
MISS_RATIO = 0.10
MIN_LOOKUPS = 1000               # ... over at least this many lookups
# Promotions stop the daemon's loop; taking over a tenth of its time they
# are too frequent for the writes they serve.
PROMOTION_SHARE = 0.10
# The daemon was busy (running or waiting for a CPU) at least this share of
# the interval, and waited at least as long as it ran: contention, not the
# map, sets the write latency. (An idle daemon that waits 10 ms for a core
# to wake up is no finding.)
BUSY_SHARE = 0.2
LOGIND_CONFIGS = (Path("/etc/systemd/logind.conf"), Path("/etc/systemd/logind.conf.d"),
                  Path("/run/systemd/logind.conf.d"), Path("/usr/local/lib/systemd/logind.conf.d"),
                  Path("/usr/lib/systemd/logind.conf.d"))
LOGIND_RUNNING = Path("/run/systemd/seats")      # exists while systemd-logind runs
LINGER_DIR = Path("/var/lib/systemd/linger")
PROC = Path("/proc")
# A process that maps a superseded generation only because it has not read
# since (an iteration is another finding) frees it at its next read. It is
# a problem once that costs much or long: a stopped process never reads
# again, and a worker that reads once an hour pins a generation for an
# hour. Much: the superseded segments it maps hold at least this many
# bytes of /dev/shm. Long: at least this many promotions have happened
# since the newest generation it maps.
STALE_BYTES = 64 << 20
STALE_PROMOTIONS = 4


@dataclass
class Finding:
    check: str
    severity: str               # PROBLEM or NOTE
    problem: str                # what is wrong, with the numbers
    advice: str                 # what to do
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    map: str
    daemon_pid: int
    daemon_alive: bool
    generation: int
    live_keys: int
    interval_s: float
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not any(f.severity == PROBLEM for f in self.findings)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["healthy"] = self.healthy
        return out


def diagnose(name: str, interval: float = 1.0) -> Report:
    """Every check of map name; ShmmapError if there is no such map."""
    reader = MapReader(name)
    try:
        header = reader.header
        gen = reader.refresh()
        pid = int(lib.shm_map_daemon_pid(header))
        # The daemon's lock on the header, not its pid (pids are reused),
        # says whether the map is served.
        report = Report(map=name, daemon_pid=pid, daemon_alive=is_served(name),
                        generation=int(gen.gen), live_keys=int(gen.header.live_count),
                        interval_s=interval)
        live_bytes = int(gen.header.live_bytes)
    finally:
        reader.close()
    checks = report.findings
    if not report.daemon_alive:
        checks.append(Finding(
            "daemon_not_running", PROBLEM,
            f"map {name!r} exists ({report.live_keys:,} keys, generation {report.generation}) "
            f"but its daemon{f' (pid {pid})' if pid else ''} is not running: readers see the "
            "last committed state, every write fails.",
            f"start one: `shmmap serve {name}` adopts the map with every acknowledged write "
            f"(or `shmmap cleanup {name}` removes it).", {"pid": pid}))
    else:
        checks += _daemon_checks(name, pid, interval)
    checks += pinned_generations(name, report.generation)
    checks += shm_space(report.live_keys, live_bytes)
    owner = (segments.SHM_DIR / segments.header_name(name)[1:]).stat().st_uid
    checks += remove_ipc(owner)
    checks += legacy_segments(legacy.find())
    return report


def legacy_segments(found: list[legacy.LegacySegment]) -> list[Finding]:
    """A note if /dev/shm holds an older shmmap's segments: this one can
    neither read nor serve those maps, and they take /dev/shm's space."""
    if not found:
        return []
    served = sum(s.served for s in found)
    return [Finding(
        "legacy_segments", NOTE,
        f"/dev/shm holds {len(found)} segments of an older shmmap (layout "
        f"{lib.SHM_LAYOUT_VERSION - 1}, {legacy.PREFIX}*), {served} of them served by its "
        "daemons; this shmmap can neither read nor serve those maps.",
        "stop the older daemons no one needs; then `shmmap cleanup --legacy --dry-run` "
        "lists and `shmmap cleanup --legacy` removes the segments no daemon serves.",
        {"segments": len(found), "served": served})]


# -- the daemon's counters -----------------------------------------------------

def _daemon_checks(name: str, pid: int, interval: float) -> list[Finding]:
    from ..client.map import connect
    from ..shared.errors import DaemonUnavailableError
    try:
        m = connect(name, timeout=CONNECT_TIMEOUT)
    except DaemonUnavailableError as exc:
        state = _proc_state(pid)
        return [Finding("daemon_not_answering", PROBLEM,
                        f"daemon pid {pid} runs (state: {state}) but does not answer: {exc}",
                        "if it is stopped (T), `kill -CONT` it; if it is busy, wait and run "
                        "doctor again; if it hangs, `kill` it and start `shmmap serve` again "
                        "(the map is adopted).", {"pid": pid, "state": state})]
    with m:
        cpu0 = _schedstat(pid)
        before = m._request(Op.TIMINGS)
        t0 = time.monotonic()
        time.sleep(interval)
        m.refresh()         # so that the daemon does not count doctor's own old generation
        after = m._request(Op.TIMINGS)
        seconds = time.monotonic() - t0
        cpu1 = _schedstat(pid)
    out = miss_rate(before["stats"], after["stats"], seconds)
    out += promotion_rate(before["stats"], after["stats"], seconds)
    out += upstream_health(after["stats"])
    if cpu0 is not None and cpu1 is not None:
        p99 = quantile(summed(requests_between(before, after)), 0.99)
        out += cpu_contention(cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], seconds, _runnable(),
                              len(os.sched_getaffinity(0)), p99)
    return out


def upstream_health(st: dict[str, Any]) -> list[Finding]:
    """A near cache (serve --upstream) that is stale: its Redis out of
    reach, or an update its limits refused; keys of Redis it leaves out."""
    up = st.get("upstream")
    if up is None:
        return []
    out = []
    if up["state"] != "live":
        out.append(Finding(
            "upstream_unreachable", PROBLEM,
            f"the map is a near cache of {up['url']}, which is {up['state']} since "
            f"{time.strftime('%H:%M:%S', time.localtime(up['since']))}: readers read a copy "
            "that may be stale, and writes fail with UpstreamUnavailableError.",
            "check that Redis runs and this host reaches it (redis-cli -u URL ping); the "
            "daemon reconnects and resyncs by itself.", {"state": up["state"]}))
    elif up["stale"]:
        out.append(Finding(
            "upstream_over_limits", PROBLEM,
            f"an update from {up['url']} did not fit the map's limits "
            f"({up['commit_errors']} so far): the copy misses it.",
            f"raise --max-live-bytes or --max-value of `shmmap serve {st['name']}`, or narrow "
            "its --prefix ranges; the copy is whole again after the next full load.",
            {"commit_errors": up["commit_errors"]}))
    if up["skipped_keys"]:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(up["skipped_keys"].items()))
        out.append(Finding(
            "upstream_skipped_keys", NOTE,
            f"keys of {up['url']} under the map's prefixes that it leaves out: {kinds} "
            "(the daemon's log names each).",
            "nothing, if those keys are not meant for readers; the map holds strings and "
            "hashes, and strings --decode can read.", {"skipped_keys": up["skipped_keys"]}))
    return out


def miss_rate(a: dict[str, Any], b: dict[str, Any], seconds: float) -> list[Finding]:
    lookups, misses = b["lookups"] - a["lookups"], b["misses"] - a["misses"]
    if lookups < MIN_LOOKUPS or misses < MISS_RATIO * lookups:
        return []
    per_s = misses / seconds
    if b["dirty_keys"] == 0:
        return [Finding(
            "absent_lookups", NOTE,
            f"{misses / lookups:.0%} of lookups missed ({per_s:,.0f}/s) with nothing in the "
            "dirty table: they are lookups of keys not in the map, which probe both tables. "
            "No promotion comes for them, and none would help.",
            "nothing, unless those keys should be there.",
            {"miss_ratio": misses / lookups, "misses_per_s": per_s})]
    live = max(b["live_keys"], lib.SHM_MIN_DIRTY)
    threshold = live * lib.SHM_MISSES_PER_LIVE
    return [Finding(
        "miss_rate", PROBLEM,
        f"readers missed the read table on {misses / lookups:.0%} of their lookups "
        f"({per_s:,.0f} misses/s of {lookups / seconds:,.0f} lookups/s): they look up keys "
        f"written since the last promotion ({b['dirty_keys']:,} in the dirty table), each a "
        f"second probe. The daemon promotes for misses after {threshold:,} of them "
        f"({lib.SHM_MISSES_PER_LIVE} per live key): at this rate within about "
        f"{threshold / per_s:,.1f} s, copying {b['live_keys']:,} keys (the last promotion "
        f"took {b['last_promotion_ms']:,.1f} ms).",
        f"nothing, if writes just loaded the map: the promotion comes by itself. To skip the "
        f"wait, promote after loading (`shmmap promote {b['name']}` or m.promote()).",
        {"miss_ratio": misses / lookups, "misses_per_s": per_s,
         "promotion_after_misses": threshold, "dirty_keys": b["dirty_keys"]})]


def promotion_rate(a: dict[str, Any], b: dict[str, Any], seconds: float) -> list[Finding]:
    count = b["promotions"] - a["promotions"]
    if count < 2:
        return []
    spent = count * b["last_promotion_ms"] / 1000
    if spent < PROMOTION_SHARE * seconds:
        return []
    writes = b["writes"] - a["writes"]
    reasons = {r: n - a["promotions_by_reason"].get(r, 0)
               for r, n in b["promotions_by_reason"].items()
               if n != a["promotions_by_reason"].get(r, 0)}
    why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    advice = {
        "requested": "a client calls promote() this often: call it after loading, not "
                     "after each write.",
        "misses": "readers keep looking up fresh keys: batch the writes (m.update, m.batch) "
                  "and promote once after each batch.",
        "full": "each generation fills quickly: the map grows or churns (keys stored and "
                "deleted); check --max-live-bytes and the size of values.",
    }
    main = max(reasons, key=lambda r: reasons[r]) if reasons else "full"
    return [Finding(
        "promotion_rate", PROBLEM,
        f"{count} promotions in {seconds:.1f} s ({why}) for {writes:,} writes: about "
        f"{spent / seconds:.0%} of the daemon's time went to copying the map (the last took "
        f"{b['last_promotion_ms']:,.1f} ms for {b['live_keys']:,} keys), and writes wait "
        "meanwhile.", advice.get(main, advice["full"]),
        {"promotions": count, "writes": writes, "by_reason": reasons,
         "share": spent / seconds})]


# -- who maps what ---------------------------------------------------------------

def mapped_generations(name: str, proc: Path = PROC) -> dict[int, dict[int, int]]:
    """{pid: {generation: bytes mapped}} of every process whose mappings
    this user may read, from /proc/PID/maps."""
    pattern = re.compile(
        r"^([0-9a-f]+)-([0-9a-f]+) .* /dev/shm/" + re.escape(segments.gen_name(name, 0)[1:-1])
        + r"(\d+)(?: \(deleted\))?$")
    out: dict[int, dict[int, int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "maps").read_text()
        except OSError:
            continue            # gone, or another user's
        for line in text.splitlines():
            m = pattern.match(line)
            if m:
                gens = out.setdefault(int(entry.name), {})
                size = int(m.group(2), 16) - int(m.group(1), 16)
                gens[int(m.group(3))] = gens.get(int(m.group(3)), 0) + size
    return out


def _slots(name: str) -> dict[int, dict[str, int]]:
    """{pid: its reader slot's fields} (what clients report of themselves)."""
    try:
        mm = segments.open_readonly(segments.readers_name(name))
    except (FileNotFoundError, PermissionError):
        return {}
    try:
        buf = ffi.from_buffer(mm)
        h = ffi.cast("struct shm_readers_header *", buf)
        out = {}
        if h.magic == lib.SHM_MAGIC_READERS:
            count = min(int(h.slot_count), (len(mm) - ffi.sizeof("struct shm_readers_header"))
                        // ffi.sizeof("struct shm_reader_slot"))
            for i in range(count):
                s = slot_at(buf, i)
                if s.pid:
                    out[int(s.pid)] = {"gen": int(s.gen), "mapped_gens": int(s.mapped_gens),
                                       "oldest_gen": int(s.oldest_gen)}
        ffi.release(buf)
    finally:
        mm.close()
    return out


def pinned_generations(name: str, current: int, proc: Path = PROC) -> list[Finding]:
    """Processes that keep superseded generations of map name mapped."""
    out = []
    slots = _slots(name)
    for pid, gens in sorted(mapped_generations(name, proc).items()):
        old = {g: n for g, n in gens.items() if g < current}
        if not old or pid == os.getpid():
            continue
        pinned = sum(old.values())
        who = f"pid {pid} ({_cmdline(pid, proc)})"
        listed = ", ".join(str(g) for g in sorted(old))
        slot = slots.get(pid, {})
        data = {"pid": pid, "generations": sorted(old), "bytes": pinned,
                "current_generation": current, "slot": slot}
        if len(gens) > len(old) or slot.get("mapped_gens", 0) > 1:
            out.append(Finding(
                "pinned_generation", PROBLEM,
                f"{who} holds superseded generation{'s' * (len(old) > 1)} {listed} of map "
                f"{name!r} while it reads generation {current}: an iteration that has not "
                f"ended keeps its snapshot mapped, {human_bytes(pinned)} of /dev/shm that "
                "cannot be freed until it ends.",
                "let the iteration end: run it to its end, or break out and drop the "
                "iterator (del it); for long work on a snapshot, copy it first "
                "(m.snapshot()).", data))
        else:
            out.append(_stale_generation(who, listed, len(old), pinned, current - max(old),
                                         _proc_state(pid, proc), data))
    return out


def _stale_generation(who: str, listed: str, count: int, pinned: int, behind: int,
                      state: str, data: dict[str, Any]) -> Finding:
    """The finding for a process that maps superseded generations (listed,
    pinned bytes of them) and no current one: its newest is behind
    promotions old; state is its /proc state letter."""
    data.update(promotions_behind=behind, state=state)
    what = (f"{who} still maps superseded generation{'s' * (count > 1)} {listed} "
            f"({human_bytes(pinned)}, {behind} promotion{'s' * (behind != 1)} old)")
    if state in ("T", "t"):
        return Finding(
            "stopped_reader", PROBLEM,
            f"{what}: it is stopped, so it cannot let go of them until it runs again.",
            f"resume it (kill -CONT {data['pid']}) or end it; the memory is freed when it "
            "reads again or exits.", data)
    if pinned >= STALE_BYTES or behind >= STALE_PROMOTIONS:
        return Finding(
            "stale_generation", PROBLEM,
            f"{what}: it has not read the map since, or iterates since before the promotion; "
            f"past {human_bytes(STALE_BYTES)} or {STALE_PROMOTIONS} promotions that is /dev/shm "
            "held for nothing.",
            "a process that reads rarely can let go after its work: m.refresh(), or close() "
            "the map when idle; a long iteration can work on m.snapshot() instead.", data)
    return Finding(
        "idle_generation", NOTE,
        f"{what}: it is iterating since before the promotion, or has not read since; its "
        "next lookup lets an idle one go.",
        "nothing if it is idle and small; otherwise see whether that process iterates for "
        "long.", data)



def _cmdline(pid: int, proc: Path) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return text if len(text) <= 60 else text[:57] + "..."


# -- the host ---------------------------------------------------------------------

def shm_space(live_keys: int, live_bytes: int, shm_dir: Path = segments.SHM_DIR
              ) -> list[Finding]:
    """/dev/shm's free space against the size of the next generation."""
    geo = ffi.new("struct shm_geometry *")
    if lib.shm_plan(geo, live_keys, live_bytes, 0, 0) != lib.SHM_OK:
        return []
    need = int(geo.segment_size)
    st = os.statvfs(shm_dir)
    free = st.f_bavail * st.f_frsize
    if free >= need:
        return []
    return [Finding(
        "shm_space", PROBLEM,
        f"{shm_dir} has {human_bytes(free)} free of {human_bytes(st.f_blocks * st.f_frsize)}, "
        f"and the next generation of this map needs {human_bytes(need)} ({live_keys:,} keys): "
        "the next promotion will fail, and the map stops taking new keys once its generation "
        "is full.",
        f"free room in {shm_dir} (other maps: `shmmap ls`; stale ones: `shmmap cleanup`; "
        "iterations that pin old generations: see above), or make it larger (a tmpfs: "
        f"`mount -o remount,size=... {shm_dir}`).", {"free": free, "needed": need})]


def remove_ipc(uid: int, configs: Iterable[Path] = LOGIND_CONFIGS,
               logind_running: Path = LOGIND_RUNNING, linger_dir: Path = LINGER_DIR,
               login_defs: Path = Path("/etc/login.defs")) -> list[Finding]:
    """logind's RemoveIPC=yes (its default) deletes every shared-memory
    segment of a non-system user when their last session ends: the map,
    under its daemon."""
    if not logind_running.exists() or uid <= _sys_uid_max(login_defs):
        return []
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    if (linger_dir / user).exists():
        return []               # lingering: the user's manager never logs out
    value, where = "yes", "systemd's default"
    for path in _config_files(configs):
        for line in path.read_text(errors="replace").splitlines():
            key, sep, v = line.strip().partition("=")
            if sep and key.strip() == "RemoveIPC":
                value, where = v.strip().lower(), str(path)
    if value not in ("yes", "true", "1", "on"):
        return []
    return [Finding(
        "remove_ipc", PROBLEM,
        f"the map belongs to user {user!r} (uid {uid}), not a system user, and logind's "
        f"RemoveIPC=yes ({where}) deletes all of that user's shared memory when their last "
        "session ends: the map would vanish under its daemon.",
        f"run the daemon as a system user (the unit in daemon/ does), or "
        f"`loginctl enable-linger {user}`, or set RemoveIPC=no in /etc/systemd/logind.conf.",
        {"uid": uid, "user": user, "source": where})]


def _config_files(configs: Iterable[Path]) -> list[Path]:
    """logind.conf, then its drop-ins in name order (the last setting wins)."""
    files, dropins = [], []
    for path in configs:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            dropins += [p for p in path.glob("*.conf") if p.is_file()]
    return files + sorted(dropins, key=lambda p: p.name)


def _sys_uid_max(login_defs: Path) -> int:
    try:
        for line in login_defs.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "SYS_UID_MAX" and parts[1].isdigit():
                return int(parts[1])
    except OSError:
        pass
    return 999


def cpu_contention(ran_ns: int, waited_ns: int, seconds: float, runnable: Optional[int],
                   cores: int, p99: Optional[float]) -> list[Finding]:
    """The daemon waited for a CPU (its run queue wait, from schedstat) at
    least as long as it ran: contention sets the write latency."""
    if waited_ns < ran_ns or ran_ns + waited_ns < BUSY_SHARE * seconds * 1e9:
        return []
    load = f"{runnable} processes runnable on {cores} cores" if runnable is not None \
        else f"{cores} cores"
    latency = f"; p99 request latency in the daemon {p99 * 1e3:,.2f} ms" if p99 else ""
    return [Finding(
        "cpu_contention", PROBLEM,
        f"the daemon waited {waited_ns / 1e9:.2f} s for a CPU in {seconds:.1f} s and ran "
        f"{ran_ns / 1e9:.2f} s ({load}{latency}): writes wait for a core more than for the "
        "map.",
        "run fewer busy processes, or give the daemon a core of its own (taskset, or "
        "CPUAffinity= in its unit) or a higher priority (Nice=-5).",
        {"ran_s": ran_ns / 1e9, "waited_s": waited_ns / 1e9, "runnable": runnable,
         "cores": cores})]


def _schedstat(pid: int) -> Optional[tuple[int, int]]:
    """(ns run, ns waited on a run queue) of process pid's main thread."""
    try:
        ran, waited, _ = (PROC / str(pid) / "schedstat").read_text().split()
        return int(ran), int(waited)
    except (OSError, ValueError):
        return None


def _runnable() -> Optional[int]:
    """Runnable processes now (shm_runnable: /proc/loadavg), less this one;
    None if the kernel's count cannot be read."""
    n = lib.shm_runnable()
    return n - 1 if n > 0 else None


def _proc_state(pid: int, proc: Path = PROC) -> str:
    """pid's state letter from /proc/PID/stat (R, S, T, ...); "?" if gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0]
    except (OSError, ValueError, IndexError):
        return "?"


# -- output ---------------------------------------------------------------------

def render(report: Report) -> str:
    daemon = (f"daemon pid {report.daemon_pid}" if report.daemon_alive
              else "no daemon running")
    lines = [f"map {report.map!r}: {daemon}, generation {report.generation}, "
             f"{report.live_keys:,} keys (watched for {report.interval_s:g} s)"]
    for f in report.findings:
        lines += ["", f"{f.severity}: {f.problem}", f"  what to do: {f.advice}"]
    if report.healthy:
        lines += ["", "no problems found" + (" (see the notes)" if report.findings else "")]
    return "\n".join(lines)


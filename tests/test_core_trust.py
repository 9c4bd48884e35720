"""Misuse the core must survive: another process writing the map's segments
(a group member of a map served with --mode 0o660, or a bug), headers that
would break the map once adopted, seqs at their bound, and the one table of
status codes the core returns."""
from __future__ import annotations

import multiprocessing as mp
import os
import stat
from typing import Any, Callable

import pytest

import shmmap
from shmmap._core import ffi, lib
from shmmap.client.reader import MapReader
from shmmap.server.writer import MapWriter, data_mode
from shmmap.shared import corestatus, segments
from shmmap.shared.codec import encode_key, encode_value
from shmmap.shared.errors import CorruptSegmentError, MapFullError, ShmmapError
from shmmap.shared.protocol import batch_blob

CTX = mp.get_context("spawn")
FORGED = 2**44                      # a counter far past any segment's end


def _mode(seg: str) -> int:
    return stat.S_IMODE(os.stat(str(segments.SHM_DIR) + seg).st_mode)


def _off(field: str) -> int:
    return int(ffi.offsetof("struct shm_gen_header", field))


def _put64(mm: Any, off: int, value: int) -> None:
    mm[off:off + 8] = value.to_bytes(8, "little")


def _get64(mm: Any, off: int) -> int:
    return int.from_bytes(mm[off:off + 8], "little")


def _stores(keys: range, tag: str = "v") -> bytes:
    return batch_blob((encode_key(k), encode_value(f"{tag}{k}")) for k in keys)


def _in_child(fn: Callable[..., None], *args: Any) -> None:
    """Runs fn in a child process: a crash fails the test, not pytest."""
    child = CTX.Process(target=fn, args=args)
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0, f"the child ended with {child.exitcode}"


# -- item 12: data segments are the daemon's alone -------------------------------

@pytest.mark.parametrize("mode,data", [(0o600, 0o600), (0o660, 0o640), (0o666, 0o644)])
def test_header_and_generations_take_no_group_or_other_write(map_name: str, mode: int,
                                                             data: int) -> None:
    assert data_mode(mode) == data
    w = MapWriter(map_name, mode=mode)
    try:
        w.apply(_stores(range(10)))
        w.promote()
        segs = segments.map_segments(map_name)
        assert len(segs) == 2                   # the header and one generation
        assert {seg: _mode(seg) for seg in segs} == {seg: data for seg in segs}
    finally:
        w.close()


def _writer_with_forged_counters(name: str) -> None:
    w = MapWriter(name)
    w.apply(_stores(range(100)))
    w.commit()
    other = segments.open_readwrite(w.generation.segment)     # another process's mapping
    for field in ("dirty_count", "arena_used", "live_count", "live_bytes"):
        _put64(other, _off(field), FORGED)
    w.apply(_stores(range(50, 200), "w"))      # 100 new keys, 50 overwritten
    w.commit()
    # The writer stored its own counters over the forged ones.
    assert _get64(other, _off("dirty_count")) == 200
    assert _get64(other, _off("live_count")) == 200
    assert _get64(other, _off("arena_used")) < w.generation.view.arena_hi
    w.generation.validate()
    r = MapReader(name)
    expect = {k: f"v{k}" for k in range(50)} | {k: f"w{k}" for k in range(50, 200)}
    assert dict(r.items()) == expect and len(r) == 200
    w.promote()
    assert dict(r.items()) == expect
    r.close()
    other.close()
    w.close()


def test_the_writer_never_trusts_counters_read_back_from_shared_memory(map_name: str) -> None:
    """dirty_count, arena_used, live_count and live_bytes set to 2**44
    through another read-write mapping: the next apply stays in bounds."""
    _in_child(_writer_with_forged_counters, map_name)


def _writer_with_forged_full_index(name: str) -> None:
    w = MapWriter(name)
    w.apply(_stores(range(5)))
    w.commit()
    other = segments.open_readwrite(w.generation.segment)
    view = w.generation.view
    start = _get64(other, _off("dirty_index_off"))
    for s in range(view.dirty_mask + 1):       # every slot used, none of them ours
        if _get64(other, start + 8 * s) == 0:
            _put64(other, start + 8 * s, (0xFFFF_FFFF << 32) | 1)
    before = (int(view.dirty_count), int(view.arena_used))
    try:
        w.apply(_stores(range(100, 101)))
    except CorruptSegmentError as exc:
        assert "segment failed validation" in str(exc) or "item 0" in str(exc), exc
    else:
        raise AssertionError("a full dirty index was not noticed")
    assert (int(view.dirty_count), int(view.arena_used)) == before
    other.close()
    w.close()


def test_a_forged_full_index_fails_the_write_instead_of_looping(map_name: str) -> None:
    _in_child(_writer_with_forged_full_index, map_name)


def test_a_daemon_serving_mode_0660_keeps_writing_in_bounds_after_forged_counters(
        map_name: str) -> None:
    """A group member writes 2**44 into the live map's counters; the
    daemon's next writes land in bounds and the daemon lives."""
    with shmmap.Daemon(map_name, mode=0o660) as d, d.connect() as m:
        m.update({i: i for i in range(100)})
        segs = segments.map_segments(map_name)
        assert {s: _mode(s) for s in segs} == {
            s: 0o660 if s == segments.readers_name(map_name) else 0o640 for s in segs}
        gen = next(s for s in segs if s.startswith(segments.gen_name(map_name, 0)[:-1]))
        other = segments.open_readwrite(gen)
        try:
            _put64(other, _off("dirty_count"), FORGED)
            _put64(other, _off("arena_used"), FORGED)
            m.update({i: -i for i in range(50, 300)})
            assert m.get(299) == -299 and m.get(10) == 10
            assert dict(m.items()) == {i: (i if i < 50 else -i) for i in range(300)}
            m.promote()
            assert len(m) == 300
        finally:
            other.close()
        assert d.process is not None and d.process.poll() is None


# -- item 14: adoption refuses what would break the map afterwards --------------

def _dead_daemon_map(name: str, keys: int = 20) -> str:
    """A map whose writer went away without removing it; its current
    generation's segment name."""
    w = MapWriter(name)
    w.apply(_stores(range(keys)))
    w.commit()
    seg = w.generation.segment
    w.close(remove=False)
    return seg


@pytest.mark.parametrize("seq", [2**64 - 1, lib.SHM_MAX_SEQ + 1])
def test_adoption_refuses_a_committed_seq_past_the_bound(map_name: str, seq: int) -> None:
    seg = _dead_daemon_map(map_name)
    mm = segments.open_readwrite(seg)
    try:
        _put64(mm, _off("committed_seq"), seq)
        with pytest.raises(CorruptSegmentError, match="over the highest seq"):
            MapWriter.adopt(map_name)
        assert seg in segments.map_segments(map_name), "a refused map is left as it was"
    finally:
        mm.close()


def test_a_map_at_the_highest_seq_refuses_writes_with_a_clear_error(map_name: str) -> None:
    seg = _dead_daemon_map(map_name)
    mm = segments.open_readwrite(seg)
    _put64(mm, _off("committed_seq"), lib.SHM_MAX_SEQ)
    mm.close()
    w = MapWriter.adopt(map_name)
    try:
        assert w.seq == lib.SHM_MAX_SEQ
        with pytest.raises(MapFullError, match="highest"):
            w.apply(_stores(range(1)))
        r = MapReader(map_name)
        assert r.lookup(3) == "v3"
        r.close()
    finally:
        w.close()


def test_adoption_repairs_a_current_generation_marked_superseded(map_name: str) -> None:
    """Readers of a current generation marked superseded would look for a
    newer one forever; adoption publishes a rebuilt one that is not."""
    seg = _dead_daemon_map(map_name)
    mm = segments.open_readwrite(seg)
    _put64(mm, _off("superseded"), 1)
    mm.close()
    w = MapWriter.adopt(map_name)
    try:
        assert w.generation.segment != seg and not lib.shm_superseded(w.generation.view)
        r = MapReader(map_name)
        assert not lib.shm_superseded(r.generation.view)
        assert r.lookup(7) == "v7" and len(r) == 20
        r.close()
    finally:
        w.close()


def _validate(data: bytearray) -> tuple[int, str]:
    err = corestatus.err_buffer()
    rc = lib.shm_gen_validate(ffi.from_buffer(data), len(data), err, corestatus.ERR_LEN)
    return rc, ffi.string(err).decode()


def test_entries_sharing_one_chain_are_refused_without_walking_it_again(map_name: str) -> None:
    """8k entries whose heads all lead into one chain of 8k records: the old
    validator walked the chain once per entry (2 s, and accepted it); each
    record may now be reached from one entry only."""
    n = 8192
    w = MapWriter(map_name)
    try:
        w.apply(_stores(range(1, n)))          # promotes: the chain below stays whole
        w.apply(batch_blob((encode_key(0), encode_value(i)) for i in range(n)))
        w.commit()
        data = bytearray(w.generation.mm)
        assert _validate(data) == (0, "")
        entries = _get64(data, _off("entries_off"))
        size, head = ffi.sizeof("struct shm_entry"), ffi.offsetof("struct shm_entry", "head")
        newest = max(_get64(data, entries + e * size + head) for e in range(n))
        at, length = newest, 0
        while at:
            at, length = _get64(data, at + ffi.offsetof("struct shm_record", "prev")), length + 1
        assert length == n
        for e in range(n):
            _put64(data, entries + e * size + head, newest)
        rc, msg = _validate(data)
        # Refused at the first record another entry owns (its flags name
        # its entry), or, failing that, at the first record reached twice.
        assert rc == lib.SHM_ECORRUPT and ("bad flags" in msg or "reached twice" in msg), msg
    finally:
        w.close()


def test_an_index_run_longer_than_the_bound_is_refused(map_name: str) -> None:
    """Validation probes each entry's key: a crafted index with all its used
    slots in one run would make that quadratic, and no sound index at load
    1/2 has a run of SHM_MAX_PROBE_RUN slots."""
    w = MapWriter(map_name)
    try:
        w.apply(_stores(range(lib.SHM_MAX_PROBE_RUN + 100)))
        w.promote()
        data = bytearray(w.generation.mm)
        assert _validate(data) == (0, "")
        start = _get64(data, _off("read_index_off"))
        slots = _get64(data, _off("read_slots"))
        used = [w for w in (_get64(data, start + 8 * s) for s in range(slots)) if w]
        for s in range(slots):
            _put64(data, start + 8 * s, used[s] if s < len(used) else 0)
        rc, msg = _validate(data)
        assert rc == lib.SHM_ECORRUPT and "used slots in a row" in msg, msg
    finally:
        w.close()


# -- the error contract ----------------------------------------------------------

STATUS_CODES = sorted(code for code in (getattr(lib, n) for n in dir(lib) if n.startswith("SHM_E"))
                      if isinstance(code, int) and code < 0)


@pytest.mark.parametrize("code", STATUS_CODES)
def test_every_status_code_has_a_text_and_an_exception(code: int) -> None:
    assert lib.SHM_STATUS_MIN <= code < lib.SHM_OK
    text = corestatus.strerror(code)
    assert text and text != "unknown status"
    exc = corestatus.error(code, context="ctx")
    assert isinstance(exc, corestatus.EXCEPTIONS[code]) and isinstance(exc, ShmmapError)
    assert str(exc) == f"ctx: {text} (status {code})"


def test_codes_outside_the_table_and_success() -> None:
    for code in (1, -1, -9, lib.SHM_STATUS_MIN - 1, -2**31):
        assert corestatus.strerror(code) == "unknown status"
    assert corestatus.strerror(lib.SHM_OK) == "success"
    assert corestatus.check(7) == 7
    err = corestatus.err_buffer()
    err[0:5] = b"boom\0"
    with pytest.raises(CorruptSegmentError, match="^seg: boom$"):
        corestatus.check(lib.SHM_ECORRUPT, err, "seg")


def test_shm_apply_validates_a_blob_once_and_applies_it_whole_or_not(map_name: str) -> None:
    """A batch that does not fit comes back SHM_ENOSPACE with its needs and
    validated set, changing nothing; a bad seq is refused."""
    w = MapWriter(map_name)
    try:
        view = w.generation.view
        room = int(view.dirty_cap)
        blob = _stores(range(room + 1))
        info = ffi.new("struct shm_apply_info *")
        err = corestatus.err_buffer()
        assert lib.shm_apply(view, blob, len(blob), 1, info, err, corestatus.ERR_LEN) \
            == lib.SHM_ENOSPACE
        assert (info.validated, info.items, info.new_keys_max) == (1, room + 1, room + 1)
        assert (int(view.dirty_count), int(view.arena_used)) == (0, 0)
        for seq in (0, lib.SHM_MAX_SEQ + 1):
            info.validated = 0
            assert lib.shm_apply(view, blob, len(blob), seq, info, err, corestatus.ERR_LEN) \
                == lib.SHM_EINVAL
            assert "seq" in ffi.string(err).decode()
        assert w.apply(blob) == 1                  # promotes, then applies it
        w.commit()
        assert w.stats.promotions_by_reason == {"full": 1}
        r = MapReader(map_name)
        assert len(dict(r.items())) == room + 1
        r.close()
    finally:
        w.close()

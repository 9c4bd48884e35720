"""Encoding of keys and values as msgpack.

Keys are compared and hashed as bytes, so each has exactly one encoding:
msgpack-python's, with ``bin`` for bytes. Allowed keys are ``str``,
``bytes``, ``int`` (64-bit signed or unsigned) and tuples of those; a bool
key is its int, as in a dict.

A value comes back as it went in, with its type: msgpack's own types map
to None, bool, int, float, str, bytes, list and dict, and shmmap gives
tuple, set, frozenset, datetime, date, Decimal and UUID ext types of their
own (their codes and payloads: SHM_EXT_* in cext/shmmap.h). An
application adds its own types with ``Ext``. Every value is checked
before a byte is sent by the same C function the daemon checks it with
(nesting, hashable map keys, the ext payloads), so what encodes is what
the daemon stores. The README's table of types says what each type
becomes.
"""
from __future__ import annotations

import datetime
import decimal
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable

import msgpack

from .._core import ffi, lib

Key = Any  # str | bytes | int | tuple of those
_KEY_HINT = "keys must be str, bytes, int or tuples of them"
MAX_DEPTH = lib.SHM_MAX_DEPTH
EXT_OWN_FIRST = lib.SHM_EXT_OWN_FIRST   # ext codes from here on are shmmap's
_TUPLE, _SET, _FROZENSET = lib.SHM_EXT_TUPLE, lib.SHM_EXT_SET, lib.SHM_EXT_FROZENSET
_DATETIME, _DATE = lib.SHM_EXT_DATETIME, lib.SHM_EXT_DATE
_DECIMAL, _UUID = lib.SHM_EXT_DECIMAL, lib.SHM_EXT_UUID
_ERR_LEN = lib.SHM_ERR_LEN
_check_value = lib.shm_check_value


class _Packers:
    """Idle Packers of one configuration. A Packer keeps the object it is
    packing in its own buffer, and packing runs Python code halfway
    through (a subclass's items(), the ext hooks below, which pack the
    inside of a tuple with another Packer), where the GIL may pass to
    another thread. So a Packer never serves two packs at once: each pack
    takes one for itself and gives it back when done. list.pop() and
    list.append() are atomic under the GIL, so no two packs ever hold the
    same Packer, even when one runs inside another on the same thread. A
    pack that raises leaves its Packer to the garbage collector."""

    __slots__ = ("idle", "new")

    def __init__(self, new: Callable[[], msgpack.Packer]) -> None:
        self.idle: list[msgpack.Packer] = []
        self.new = new

    def pack(self, obj: Any) -> bytes:
        """obj as msgpack; the Packer's exception if it cannot pack obj."""
        try:
            packer = self.idle.pop()    # not "if idle": another thread may
        except IndexError:              # take the last one in between
            packer = self.new()
        data: bytes = packer.pack(obj)
        self.idle.append(packer)
        return data


# Keys keep msgpack-python's default packing (tuples as arrays), the one
# canonical form the C core hashes.
_keys = _Packers(partial(msgpack.Packer, use_bin_type=True, autoreset=True))
_pack_key = _keys.pack


def _check_key(key: object) -> object:
    """Returns key with int/str subclasses (bool, IntEnum) made plain."""
    t = type(key)
    if t is int or t is str or t is bytes:
        return key
    if isinstance(key, tuple) and t is tuple:
        return tuple(_check_key(k) for k in key)
    if isinstance(key, int):
        return int(key)
    if isinstance(key, str):
        return str(key)
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(f"{_KEY_HINT}, not {t.__name__}")


def encode_key(key: Key) -> bytes:
    """The canonical msgpack encoding of key; TypeError for other types."""
    t = type(key)
    if t is not str and t is not bytes and t is not int:
        key = _check_key(key)
    try:
        return _pack_key(key)
    except OverflowError:
        raise TypeError(f"int key {key!r} does not fit in 64 bits") from None


def decode_key(data: Any) -> Key:
    """The key whose canonical encoding is data (a tuple key as a tuple)."""
    return msgpack.unpackb(data, use_list=False, raw=False)


@dataclass(frozen=True)
class Ext:
    """An application's own value type, stored as msgpack ext type code
    (0 to 99): encode(obj) gives the bytes of an object of exactly type
    cls, decode(data) the object again. Register the same Exts in every
    process that shares the map (``connect(name, ext_types=[...])``); one
    that lacks a code reads its values as ``msgpack.ExtType(code, data)``,
    and the daemon stores them without decoding them (a conditional write
    compares them as bytes). A map pickled to another process takes its
    Exts along, so their functions must pickle (module-level ones do)."""

    code: int
    cls: type
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


# What the Packer writes for these is valid as it is (its strings are
# UTF-8); a value of any other type is checked as the daemon checks it.
_SCALARS = frozenset({int, str, bytes, float, bool, type(None)})
_US = datetime.timedelta(microseconds=1)
_EPOCH = datetime.datetime(1, 1, 1)
_U32, _U64, _I64 = 4, 8, 8
# A subclass of one of these is stored as the type itself: its data, not
# what a __str__ or __int__ of its own says (an IntEnum as its int, a
# (str, Enum) as its str); a dict subclass through its items().
_PLAIN: dict[type, Callable[[Any], Any]] = {
    int: int.__int__, float: float.__float__, str: str.__str__,
    bytes: lambda obj: bytes(memoryview(obj)), list: list.copy,
    dict: lambda obj: dict(obj.items())}
_CONTAINERS = (tuple, set, frozenset)   # their subclasses: as these


class Codec:
    """The value encoding of a map, with its application's Ext types: one
    per SharedMap, the default one (no Ext) in the daemon, which never
    needs an application's types."""

    def __init__(self, ext_types: Iterable[Ext] = ()) -> None:
        self.ext_types = tuple(ext_types)
        # strict_types: a tuple (and any subclass) is not packed as an
        # array but handed to _default, which gives it its ext type. Exact
        # int, str and bytes pack as the key Packer packs them.
        self._values = values = _Packers(partial(
            msgpack.Packer, use_bin_type=True, autoreset=True, strict_types=True,
            default=self._default))
        take, give, new = values.idle.pop, values.idle.append, values.new
        scalars, check, null, ok = _SCALARS, _check_value, ffi.NULL, lib.SHM_OK

        self._encoders: dict[type, Callable[[Any], msgpack.ExtType]] = {
            tuple: self._tuple, set: self._set, frozenset: self._frozenset,
            datetime.datetime: _datetime, datetime.date: _date,
            decimal.Decimal: _decimal, uuid.UUID: _uuid}
        decoders: dict[int, Callable[[bytes], Any]] = {
            _SET: lambda data: set(self.decode_value(data)),
            _FROZENSET: lambda data: frozenset(self.decode_value(data)),
            _DATETIME: _to_datetime, _DATE: _to_date,
            _DECIMAL: lambda data: decimal.Decimal(data.decode("ascii")),
            _UUID: lambda data: uuid.UUID(bytes=data)}
        for ext in self.ext_types:
            if not 0 <= ext.code < EXT_OWN_FIRST:
                raise ValueError(f"Ext code {ext.code} for {ext.cls.__name__}: an application's "
                                 f"codes are 0 to {EXT_OWN_FIRST - 1}")
            if ext.code in decoders or ext.cls in self._encoders:
                raise ValueError(f"Ext code {ext.code} or type {ext.cls.__name__} is taken")
            self._encoders[ext.cls] = partial(_user_ext, ext)
            decoders[ext.code] = ext.decode
        find = decoders.get
        unpackb = msgpack.unpackb

        def ext_hook(code: int, data: bytes) -> Any:
            if code == _TUPLE:          # the commonest, without a call more
                return tuple(unpackb(data, strict_map_key=False, ext_hook=ext_hook))
            decode = find(code)
            return msgpack.ExtType(code, data) if decode is None else decode(data)

        def decode_value(data: Any) -> Any:
            """The value encoded in data. The one decoder of every value
            this map reads, whatever the path: lookups (MapReader.lookup
            makes this call inline), iteration, the cache's deltas, the
            daemon's replies. A def, not a functools.partial, which builds
            its keywords anew on each call (~200 ns more a get)."""
            return unpackb(data, strict_map_key=False, ext_hook=ext_hook)

        self.ext_hook = ext_hook
        self.decode_value = decode_value

        def encode_value(value: Any) -> bytes:
            """The msgpack encoding of value; TypeError, before anything is
            sent, for a value the daemon would refuse (a type it cannot
            store, nesting deeper than MAX_DEPTH, an unhashable map key)."""
            try:
                packer = take()
            except IndexError:
                packer = new()
            try:
                data: bytes = packer.pack(value)
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                raise _unencodable(exc) from None
            give(packer)
            v = type(value)
            if v is not int and v is not str and v not in scalars and \
                    check(data, len(data), null, 0) != ok:
                _refuse(data)
            return data

        def encode_pair(key: Key, value: Any) -> bytes:
            """encode_key(key) + encode_value(value) in one call, as a store
            sends them: keys of the common types are canonical as they are,
            so they skip the checks and share the value's Packer."""
            t = type(key)
            if t is int or t is str or t is bytes:
                try:
                    packer = take()
                except IndexError:
                    packer = new()
                try:
                    kb: bytes = packer.pack(key)
                    data: bytes = packer.pack(value)
                except (TypeError, ValueError, OverflowError, RecursionError):
                    pass        # encode_key and encode_value say what is wrong
                else:
                    give(packer)
                    v = type(value)
                    if v is not int and v is not str and v not in scalars and \
                            check(data, len(data), null, 0) != ok:
                        _refuse(data)
                    return kb + data
            return encode_key(key) + encode_value(value)

        self.encode_value = encode_value
        self.encode_pair = encode_pair

    def _default(self, obj: Any) -> Any:
        """What the Packer packs for obj, a type msgpack has no form for."""
        t = type(obj)
        encode = self._encoders.get(t)
        if encode is not None:
            return encode(obj)
        for base, plain in _PLAIN.items():
            if isinstance(obj, base):
                return plain(obj)
        for base in _CONTAINERS:
            if isinstance(obj, base):
                return self._encoders[base](obj)
        raise TypeError(f"no msgpack form for type {t.__module__}.{t.__qualname__} (the "
                        "README's table of types says what is stored; an Ext adds a type)")

    def _inside(self, items: list[Any]) -> bytes:
        """items packed by another Packer: the one packing their container
        is busy with it."""
        return self._values.pack(items)

    def _tuple(self, obj: tuple[Any, ...]) -> msgpack.ExtType:
        return msgpack.ExtType(_TUPLE, self._inside(list(obj)))

    def _set(self, obj: set[Any]) -> msgpack.ExtType:
        return msgpack.ExtType(_SET, self._inside(list(obj)))

    def _frozenset(self, obj: frozenset[Any]) -> msgpack.ExtType:
        return msgpack.ExtType(_FROZENSET, self._inside(list(obj)))


def _unencodable(exc: Exception) -> TypeError:
    """The TypeError for a value msgpack failed to pack with exc. Too deep
    a value is a RecursionError from msgpack 1.2 on, and before it (the
    last release for Python 3.9) a ValueError saying so."""
    if isinstance(exc, RecursionError) or "recursion limit" in str(exc):
        return TypeError(f"value cannot be encoded as msgpack: nested deeper than "
                         f"{MAX_DEPTH} levels")
    return TypeError(f"value cannot be encoded as msgpack: {exc}")


def _refuse(data: bytes) -> None:
    """Raises TypeError with why shm_check_value refused data: the check
    runs without a message buffer first (one shared by threads could mix
    two messages; one per call would cost every call)."""
    err = ffi.new("char[]", _ERR_LEN)
    _check_value(data, len(data), err, _ERR_LEN)
    raise TypeError(f"value cannot be encoded as msgpack: {ffi.string(err).decode()}")


def _user_ext(ext: Ext, obj: Any) -> msgpack.ExtType:
    data = ext.encode(obj)
    if type(data) is not bytes:
        raise TypeError(f"Ext {ext.code}'s encode gave {type(data).__name__}, not bytes")
    return msgpack.ExtType(ext.code, data)


def _datetime(obj: datetime.datetime) -> msgpack.ExtType:
    tz = obj.tzinfo
    since = obj.replace(tzinfo=None) - _EPOCH
    head = ((since.days + 1).to_bytes(_U32, "big")
            + (since.seconds * 1_000_000 + since.microseconds).to_bytes(_U64, "big")
            + bytes([obj.fold]))
    if tz is None:
        return msgpack.ExtType(_DATETIME, head)
    if type(tz) is not datetime.timezone:
        raise TypeError(f"cannot store a datetime with a tzinfo of type {type(tz).__name__}: "
                        "only datetime.timezone offsets round-trip (dt.astimezone("
                        "datetime.timezone(dt.utcoffset())) keeps the instant)")
    offset = tz.utcoffset(None)
    name = tz.tzname(None)
    own = datetime.timezone(offset)
    tail = b"" if name == own.tzname(None) else name.encode()
    return msgpack.ExtType(_DATETIME, head + (offset // _US).to_bytes(_I64, "big", signed=True)
                           + tail)


def _to_datetime(data: bytes) -> datetime.datetime:
    day = datetime.date.fromordinal(int.from_bytes(data[:4], "big"))
    us = int.from_bytes(data[4:12], "big")
    s, us = divmod(us, 1_000_000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    tz = None
    if len(data) > 13:
        offset = int.from_bytes(data[13:21], "big", signed=True) * _US
        tz = datetime.timezone(offset, data[21:].decode()) if len(data) > 21 else \
            datetime.timezone(offset)
    return datetime.datetime(day.year, day.month, day.day, h, m, s, us, tz, fold=data[12])


def _date(obj: datetime.date) -> msgpack.ExtType:
    return msgpack.ExtType(_DATE, obj.toordinal().to_bytes(_U32, "big"))


def _to_date(data: bytes) -> datetime.date:
    return datetime.date.fromordinal(int.from_bytes(data, "big"))


def _decimal(obj: decimal.Decimal) -> msgpack.ExtType:
    # The exponent's letter follows the context (capitals); the stored
    # form has one spelling.
    return msgpack.ExtType(_DECIMAL, str(obj).replace("e", "E").encode("ascii"))


def _uuid(obj: uuid.UUID) -> msgpack.ExtType:
    return msgpack.ExtType(_UUID, obj.bytes)


CODEC = Codec()
encode_value = CODEC.encode_value
encode_pair = CODEC.encode_pair
decode_value = CODEC.decode_value

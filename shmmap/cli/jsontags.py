"""Keys and values as JSON, losslessly: what the command line prints (get,
dump) reads back (set, load) as the same Python keys and values.

JSON has no bytes, no non-string object keys, no NaN or infinities and no
tuples, so those are written as one-member objects whose member is a tag:

    {"$bytes": "<base64>"}            bytes
    {"$float": "nan" | "inf" | "-inf"}  a float JSON cannot write
    {"$map": [[key, value], ...]}     a dict with a key that is not a str
                                      (or whose only key is one of these tags)
    {"$ext": [code, "<base64>"]}      a msgpack extension: msgpack.ExtType
                                      (code 0..99) or msgpack.Timestamp (-1)
    {"$tuple": [...]}                 a tuple inside a value
    {"$set": [...]}, {"$frozenset": [...]}
    {"$datetime": [iso, fold, name]}  isoformat(), fold, the zone's own name
                                      (null: none, or the offset's default)
    {"$date": iso}, {"$decimal": str}, {"$uuid": str}

A map's key is a JSON array when it is a tuple (keys hold no lists); in a
value an array is a list. Round trips are exact for Python values; a float
stored as msgpack float32 reads back as the same number stored as float64.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import json
import math
import uuid
from typing import Any, Callable

import msgpack

BYTES, FLOAT, MAP, EXT = "$bytes", "$float", "$map", "$ext"
TUPLE, SET, FROZENSET = "$tuple", "$set", "$frozenset"
DATETIME, DATE, DECIMAL, UUID = "$datetime", "$date", "$decimal", "$uuid"
TAGS = frozenset({BYTES, FLOAT, MAP, EXT, TUPLE, SET, FROZENSET, DATETIME, DATE, DECIMAL, UUID})
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class JSONFormError(ValueError):
    """Text that is not JSON, or a tagged object that is malformed."""


def to_json(x: Any, key: bool = False) -> Any:
    """x, a value or (key=True) a map's key, as plain JSON data (dicts with
    str keys, lists, str, int, finite float, bool, None) in the tagged
    form; TypeError for what a map cannot hold either."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if type(x) is tuple:
        return [to_json(i, key) for i in x] if key else {TUPLE: [to_json(i) for i in x]}
    if isinstance(x, float):
        if math.isfinite(x):
            return x
        return {FLOAT: "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
    if isinstance(x, bytes):
        return {BYTES: _b64(x)}
    if isinstance(x, msgpack.ExtType):            # a namedtuple: before tuples
        return {EXT: [x.code, _b64(x.data)]}
    if isinstance(x, list):
        return [to_json(i) for i in x]
    if isinstance(x, dict):
        if all(type(k) is str for k in x) and not (len(x) == 1 and next(iter(x)) in TAGS):
            return {k: to_json(v) for k, v in x.items()}
        return {MAP: [[to_json(k), to_json(v)] for k, v in x.items()]}
    if isinstance(x, msgpack.Timestamp):
        return {EXT: [-1, _b64(x.to_bytes())]}
    if isinstance(x, (set, frozenset)):
        return {SET if isinstance(x, set) else FROZENSET: [to_json(i) for i in x]}
    if isinstance(x, datetime.datetime):
        tz = x.tzinfo
        offset = tz.utcoffset(x) if tz is not None else None
        name = None
        if tz is not None and offset is not None and \
                tz.tzname(x) != datetime.timezone(offset).tzname(x):
            name = tz.tzname(x)
        return {DATETIME: [x.isoformat(), x.fold, name]}
    if isinstance(x, datetime.date):
        return {DATE: x.isoformat()}
    if isinstance(x, decimal.Decimal):
        return {DECIMAL: str(x)}
    if isinstance(x, uuid.UUID):
        return {UUID: str(x)}
    raise TypeError(f"{type(x).__name__} has no JSON form")


def from_json(x: Any, key: bool = False) -> Any:
    """The key (key=True: arrays are tuples) or value that to_json(x) came
    from; JSONFormError for a malformed tagged object."""
    if isinstance(x, list):
        items = [from_json(i, key) for i in x]
        return tuple(items) if key else items
    if isinstance(x, dict):
        if len(x) == 1 and next(iter(x)) in TAGS:
            return _from_tagged(*next(iter(x.items())))
        return {k: from_json(v, key) for k, v in x.items()}
    return x


def _from_tagged(tag: str, body: Any) -> Any:
    if tag == BYTES:
        return _unb64(body, BYTES)
    if tag == FLOAT:
        if body not in _SPECIAL_FLOATS:
            raise JSONFormError(f'{{"{FLOAT}": {json.dumps(body)}}}: takes "nan", "inf" or "-inf"')
        return _SPECIAL_FLOATS[body]
    if tag in _PARSERS:
        try:
            return _PARSERS[tag](body)
        except (TypeError, ValueError, decimal.InvalidOperation) as exc:
            raise JSONFormError(f'"{tag}": {json.dumps(body)} is not one: {exc}') from None
    if tag == MAP:
        if not isinstance(body, list) or not all(
                isinstance(p, list) and len(p) == 2 for p in body):
            raise JSONFormError(f'"{MAP}" takes an array of [key, value] pairs')
        out = {}
        for k, v in body:
            if isinstance(k, list):
                raise JSONFormError(f'a "{MAP}" key cannot be an array (msgpack reads it '
                                    "back as an unhashable list)")
            out[from_json(k)] = from_json(v)
        return out
    if not (isinstance(body, list) and len(body) == 2 and type(body[0]) is int
            and -1 <= body[0] <= 127):
        raise JSONFormError(f'"{EXT}" takes [code (0..127, or -1: a timestamp), "<base64>"]')
    data = _unb64(body[1], EXT)
    if body[0] >= 0:
        return msgpack.ExtType(body[0], data)
    try:
        return msgpack.Timestamp.from_bytes(data)
    except ValueError as exc:
        raise JSONFormError(f'"{EXT}" -1: not a msgpack timestamp: {exc}') from None


def _datetime(body: Any) -> datetime.datetime:
    iso, fold, name = body
    if type(iso) is not str or fold not in (0, 1) or not (name is None or type(name) is str):
        raise ValueError("takes [isoformat, fold 0 or 1, zone name or null]")
    x = datetime.datetime.fromisoformat(iso).replace(fold=fold)
    offset = x.utcoffset()
    if name is not None:
        if offset is None:
            raise ValueError("a zone name needs an offset")
        x = x.replace(tzinfo=datetime.timezone(offset, name))
    return x


def _str_of(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def parsed(body: Any) -> Any:
        if type(body) is not str:
            raise ValueError("takes a string")
        return parse(body)
    return parsed


def _items_of(make: Callable[[list[Any]], Any]) -> Callable[[Any], Any]:
    def made(body: Any) -> Any:
        if type(body) is not list:
            raise ValueError("takes an array")
        return make([from_json(i) for i in body])
    return made


_PARSERS: dict[str, Callable[[Any], Any]] = {
    TUPLE: _items_of(tuple), SET: _items_of(set), FROZENSET: _items_of(frozenset),
    DATETIME: _datetime, DATE: _str_of(datetime.date.fromisoformat),
    DECIMAL: _str_of(decimal.Decimal), UUID: _str_of(uuid.UUID)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, tag: str) -> bytes:
    if not isinstance(text, str):
        raise JSONFormError(f'"{tag}" takes a base64 string, not {json.dumps(text)}')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise JSONFormError(f"{text!r} is not valid base64") from None


def dumps(x: Any, **kw: Any) -> str:
    """x in the tagged form as one JSON text (strictly valid JSON)."""
    return json.dumps(to_json(x), ensure_ascii=False, allow_nan=False, **kw)


def dumps_pair(key: Any, value: Any) -> str:
    """{"key": key, "value": value} as one JSON text: a dump's line."""
    return json.dumps({"key": to_json(key, key=True), "value": to_json(value)},
                      ensure_ascii=False, allow_nan=False)


def loads(text: str, what: str, key: bool = False) -> Any:
    """The key or value in JSON text (NaN and Infinity are accepted too);
    JSONFormError names what it was ("the value", "line 3")."""
    try:
        return from_json(json.loads(text), key)
    except json.JSONDecodeError as exc:
        raise JSONFormError(f"{what} is not valid JSON: {exc}") from None
    except JSONFormError as exc:
        raise JSONFormError(f"{what}: {exc}") from None

"""Segment files, their names, and rebuilding the keydir from them when a store opens.

Layout of a store directory (the caller owns it and its LOCK):

- `CURRENT`: the generation number in ASCII (missing = 0). A snapshot restore writes a whole
  new generation and then replaces CURRENT atomically, so a crash leaves the old contents or
  the new, never a mix; files of any other generation are leftovers and are deleted on open.
- `<gen>-<id>.seg`: segments written by `Engine.write`, appended to until they pass the size
  limit. Only the highest-id `.seg` may have a torn tail (it is truncated); every other one
  was fsynced when it was sealed, so a bad frame there is corruption.
- `<gen>-<id>.cmp`: compaction outputs, written under a temporary name, fsynced, then renamed:
  never torn. Their first frame names the segments they replace (see records.py).
- `<gen>-<id>.hint`: the keydir entries of a `.cmp`, read instead of scanning it (hints.py);
  one without its `.cmp` is deleted on open.
- `.<gen>-<id>.cmp.tmp`, `.<gen>-<id>.hint.tmp`: unfinished compaction outputs; deleted.

Other files in the directory are left alone.

Recovery keeps, per key, the entry with the highest seq (records.py), then counts live bytes
per segment so compaction knows what to reclaim.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from shardstore.engine.errors import CorruptStore
from shardstore.engine.files import FileHandle, FileLayer
from shardstore.engine.hints import decode_hint, hint_path
from shardstore.engine.keydir import Keydir
from shardstore.engine.packed import Location
from shardstore.engine.records import (
    NO_APPLIED_INDEX,
    Entry,
    ScanResult,
    entry_bytes,
    read_supersedes,
    scan_segment,
    supersedes_bytes,
)

__all__ = [
    "CURRENT_FILE",
    "KIND_COMPACTED",
    "KIND_WRITTEN",
    "NO_SEQ",
    "Location",
    "Recovered",
    "Segment",
    "read_generation",
    "recover",
    "remove_generation",
    "remove_other_generations",
    "segment_path",
    "temp_path",
    "unlink_if_there",
]

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
KIND_WRITTEN = "seg"
KIND_COMPACTED = "cmp"
TEMP_SUFFIX = ".tmp"
NAME_RE = re.compile(r"^(\d{6})-(\d{10})\.(seg|cmp)$")
HINT_RE = re.compile(r"^(\d{6})-(\d{10})\.hint$")
TEMP_RE = re.compile(r"^\.\d{6}-\d{10}\.(cmp|hint)\.tmp$")
NO_SEQ = 2**64  # min_seq of a segment without entries

@dataclass(eq=False)
class Segment:
    """One open segment file and what the engine knows about it.

    `live_bytes` counts the entries the keydir points into; `overhead` the SUPERSEDES frame;
    the rest of `size` is dead (overwritten, deleted, tombstones). `pins` counts dumps still
    reading it; a `doomed` segment is deleted when the last pin goes.
    """

    seg_id: int
    kind: str
    path: Path
    handle: FileHandle
    size: int
    live_bytes: int = 0
    overhead: int = 0
    min_seq: int = NO_SEQ
    applied_index: int = NO_APPLIED_INDEX
    pins: int = 0
    doomed: bool = False
    sealed: bool = True
    supersedes: list[int] = field(default_factory=list)

    @property
    def dead_bytes(self) -> int:
        return self.size - self.live_bytes - self.overhead


def segment_path(directory: Path, gen: int, seg_id: int, kind: str) -> Path:
    return directory / f"{gen:06d}-{seg_id:010d}.{kind}"


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_SUFFIX}")


def read_generation(layer: FileLayer, directory: Path) -> int:
    """The generation CURRENT names (0 if it is missing)."""
    data = layer.read_small(directory / CURRENT_FILE)
    if data is None:
        return 0
    try:
        return int(data.decode("ascii").strip())
    except ValueError:
        raise CorruptStore(directory / CURRENT_FILE, 0, "not a generation number") from None


def remove_other_generations(layer: FileLayer, directory: Path, gen: int) -> None:
    """Delete temp files and segments of generations other than `gen` (crash leftovers)."""
    doomed = []
    for name in layer.listdir(directory):
        match = NAME_RE.match(name) or HINT_RE.match(name)
        if TEMP_RE.match(name) or (match and int(match.group(1)) != gen):
            doomed.append(name)
    for name in doomed:
        log.warning("%s: removing leftover %s", directory, name)
        layer.unlink(directory / name)
    if doomed:
        layer.fsync_dir(directory)


def remove_generation(layer: FileLayer, directory: Path, gen: int) -> None:
    """Delete every segment of generation `gen` (the leftovers of an unfinished restore)."""
    doomed = [name for name in layer.listdir(directory)
              if (match := NAME_RE.match(name) or HINT_RE.match(name))
              and int(match.group(1)) == gen]
    for name in doomed:
        layer.unlink(directory / name)
    if doomed:
        layer.fsync_dir(directory)


@dataclass
class Recovered:
    """The state rebuilt from a generation's segments."""

    segments: dict[int, Segment]
    keydir: Keydir
    next_seq: int
    next_segment_id: int
    applied_index: int


def _list_segments(layer: FileLayer, directory: Path, gen: int) -> list[tuple[int, str]]:
    found = []
    for name in layer.listdir(directory):
        match = NAME_RE.match(name)
        if match and int(match.group(1)) == gen:
            found.append((int(match.group(2)), match.group(3)))
    return sorted(found)


def recover(layer: FileLayer, directory: Path, gen: int) -> Recovered:
    """Open every segment of generation `gen`, truncate a torn tail, rebuild the keydir.

    Segments a finished compaction replaced are deleted unread. The others are scanned one
    at a time, so memory holds one entry per key, never a segment's worth of values.
    Raises CorruptStore on a bad frame anywhere but the tail of the newest written segment.
    """
    listed = _list_segments(layer, directory, gen)
    newest_written = max((i for i, kind in listed if kind == KIND_WRITTEN), default=-1)
    superseded = _superseded(layer, directory, gen, listed)
    _remove_superseded(layer, directory, [segment_path(directory, gen, i, kind)
                                          for i, kind in listed if i in superseded])
    _remove_orphan_hints(layer, directory, gen, {i for i, kind in listed
                                                 if kind == KIND_COMPACTED
                                                 and i not in superseded})
    segments: dict[int, Segment] = {}
    best: dict[bytes, tuple[int, Entry]] = {}
    try:
        for seg_id, kind in listed:
            if seg_id in superseded:
                continue
            seg, entries = _open_segment(layer, directory, gen, seg_id, kind,
                                         tail_ok=seg_id == newest_written)
            segments[seg_id] = seg
            _merge(best, seg_id, entries)
    except BaseException:
        for seg in segments.values():
            layer.close(seg.handle)
        raise
    return _rebuild(segments, best, next_id=(listed[-1][0] + 1) if listed else 1)


def _superseded(layer: FileLayer, directory: Path, gen: int,
                listed: list[tuple[int, str]]) -> set[int]:
    """Ids named by the SUPERSEDES frame that starts every compaction output."""
    found: set[int] = set()
    for seg_id, kind in listed:
        if kind != KIND_COMPACTED:
            continue
        path = segment_path(directory, gen, seg_id, kind)
        handle = layer.open(path, create=False)
        try:
            found.update(read_supersedes(path, lambda n, off, h=handle: layer.pread(h, n, off),
                                         layer.size(handle)))
        finally:
            layer.close(handle)
    return found


def _open_segment(layer: FileLayer, directory: Path, gen: int, seg_id: int, kind: str,
                  *, tail_ok: bool) -> tuple[Segment, list[Entry]]:
    path = segment_path(directory, gen, seg_id, kind)
    handle = layer.open(path, create=False)
    try:
        size = layer.size(handle)
        hint = _read_hint(layer, path, size) if kind == KIND_COMPACTED else None
        result = hint or scan_segment(path, lambda n, off: layer.pread(handle, n, off), size,
                                      tail_ok=tail_ok)
        if result.torn:
            log.warning("%s: dropping torn tail of %d bytes at byte offset %d",
                        path, size - result.good_end, result.good_end)
            layer.truncate(handle, result.good_end)
    except BaseException:
        layer.close(handle)
        raise
    seg = Segment(seg_id, kind, path, handle, result.good_end,
                  applied_index=result.applied_index, supersedes=result.supersedes)
    seg.min_seq = min((e.seq for e in result.entries), default=NO_SEQ)
    if result.supersedes:
        seg.overhead = supersedes_bytes(len(result.supersedes))
    return seg, result.entries


def _read_hint(layer: FileLayer, path: Path, size: int) -> ScanResult | None:
    """The scan result a valid hint of `path` stands for, or None (then scan)."""
    data = layer.read_small(hint_path(path))
    hint = decode_hint(data, size) if data is not None else None
    if hint is None:
        if data is not None:
            log.warning("%s: ignoring a damaged or stale hint file", path)
        return None
    return ScanResult(hint.entries, size, hint.applied_index, False, hint.supersedes)


def _remove_superseded(layer: FileLayer, directory: Path, paths: list[Path]) -> None:
    for path in paths:
        log.warning("%s: removing %s, replaced by a finished compaction", directory, path.name)
        layer.unlink(path)
        if path.suffix == f".{KIND_COMPACTED}":
            unlink_if_there(layer, hint_path(path))
    if paths:
        layer.fsync_dir(directory)


def _remove_orphan_hints(layer: FileLayer, directory: Path, gen: int,
                         outputs: set[int]) -> None:
    orphans = [name for name in layer.listdir(directory)
               if (match := HINT_RE.match(name)) and int(match.group(1)) == gen
               and int(match.group(2)) not in outputs]
    for name in orphans:
        layer.unlink(directory / name)
    if orphans:
        layer.fsync_dir(directory)


def unlink_if_there(layer: FileLayer, path: Path) -> None:
    """Unlink `path`; a file already gone is fine."""
    try:
        layer.unlink(path)
    except FileNotFoundError:
        pass


def _merge(best: dict[bytes, tuple[int, Entry]], seg_id: int, entries: list[Entry]) -> None:
    """Keep, per key, the entry with the highest seq."""
    for entry in entries:
        current = best.get(entry.key)
        if current is None or current[1].seq < entry.seq:
            best[entry.key] = (seg_id, entry)


def _rebuild(segments: dict[int, Segment], best: dict[bytes, tuple[int, Entry]],
             next_id: int) -> Recovered:
    """The keydir of the winners that are not tombstones (built packed, in key order);
    live bytes per segment."""
    max_seq = max((entry.seq for _seg_id, entry in best.values()), default=0)
    live: list[tuple[bytes, Location]] = []
    for key in sorted(best):
        seg_id, entry = best.pop(key)
        if entry.tombstone:
            continue
        live.append((key, (seg_id, entry.value_offset, entry.value_len, entry.expire_at_ms,
                           entry.seq)))
        segments[seg_id].live_bytes += entry_bytes(len(key), entry.value_len)
    keydir = Keydir.from_items(live)
    applied = max((s.applied_index for s in segments.values()), default=NO_APPLIED_INDEX)
    return Recovered(segments, keydir, max_seq + 1, next_id, applied)

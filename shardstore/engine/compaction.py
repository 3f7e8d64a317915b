"""Compaction: rewrite sealed segments with dead bytes into new ones, without stalling requests.

Strategy (one compaction at a time, `Engine.compaction_mutex`):
1. Pick a group of sealed segments (oldest entries first) whose live bytes fit in one output.
   Pin them so their files stay open while read.
2. Scan each; per chunk of entries, under the engine lock, keep an entry if the keydir still
   points at it, or if it is a tombstone that may still hide an older put in a segment outside
   the group (its seq is above the lowest seq outside). Values are read and written to the
   output outside the lock. Entries keep their seq, so replay order never matters.
3. The output is written under a temporary name, starting with a SUPERSEDES frame naming the
   group; its hint file (hints.py) is written, fsynced and renamed first; then the output is
   fsynced, renamed to its `.cmp` name, and the directory fsynced. That rename is the commit
   point: from then on recovery ignores the group's files even if a crash leaves them behind.
4. Swap, under the lock, chunk by chunk: a keydir entry moves to the output only if it still
   equals what was copied, so a write racing the compaction always wins. Then the group leaves
   the segment set and its files are deleted, or, if a dump still pins one, when it lets go.

Any OSError fails the engine (StorageFailed), as a failed write does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from shardstore.engine.errors import EngineError, StorageFailed
from shardstore.engine.hints import encode_hint, hint_path
from shardstore.engine.host import EngineHost
from shardstore.engine.records import (
    Entry,
    encode_frame,
    encode_supersedes,
    entry_bytes,
    scan_segment,
)
from shardstore.engine.segments import (
    KIND_COMPACTED,
    NO_SEQ,
    Location,
    Segment,
    segment_path,
    temp_path,
    unlink_if_there,
)

__all__ = [
    "Background",
    "compact_all",
    "maybe_start_background",
    "release_segment",
    "stop_background",
]

log = logging.getLogger(__name__)

SELECT_CHUNK_ENTRIES = 1024  # entries judged per lock hold
SWAP_CHUNK_ENTRIES = 4096  # keydir entries moved per lock hold
SMALL_SEGMENT_FRACTION = 4  # a segment under max_segment_bytes / 4 is merged with others


@dataclass
class _Output:
    """The compaction output being written: its segment and the live entries copied into it."""

    segment: Segment
    supersedes: list[int]
    copied: list[tuple[bytes, Location, int]] = field(default_factory=list)
    hint: list[Entry] = field(default_factory=list)  # every entry written, for the hint file


class Background:
    """The compaction thread of one engine and the event that asks it to stop."""

    def __init__(self, engine: EngineHost) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(engine,), daemon=True,
                                       name=f"compact {engine.directory}")

    def _run(self, engine: EngineHost) -> None:
        try:
            with engine.compaction_mutex:
                for group in _groups(engine, _background_candidates(engine)):
                    if self.stop.is_set():
                        return
                    _compact_group(engine, group, self.stop)
        except EngineError:
            log.exception("%s: background compaction failed", engine.directory)


# -- entry points ------------------------------------------------------------------------------


def compact_all(engine: EngineHost, dead_ratio: float | None = None) -> None:
    """Seal the active segment and compact every sealed segment with dead bytes (or small),
    or, given `dead_ratio`, only those whose dead share reaches it (as the thread does)."""
    engine.seal_active()
    with engine.compaction_mutex:
        candidates = (_all_candidates(engine) if dead_ratio is None
                      else _background_candidates(engine, dead_ratio))
        for group in _groups(engine, candidates):
            _compact_group(engine, group, None)


def maybe_start_background(engine: EngineHost) -> None:
    """Start the compaction thread if none runs and enough dead bytes have piled up."""
    with engine.lock:
        running = engine.compactor
        if running is not None and running.thread.is_alive():
            return
        if engine.closed or engine.failed or not _worth_it(engine):
            return
        engine.compactor = Background(engine)
        engine.compactor.thread.start()


def stop_background(engine: EngineHost) -> None:
    """Ask the compaction thread to stop after its current step and wait for it."""
    running = engine.compactor
    if running is not None:
        running.stop.set()
        running.thread.join()


def release_segment(engine: EngineHost, seg: Segment) -> None:
    """Drop one pin; delete a doomed segment (or close a closed engine's file) when unpinned."""
    with engine.lock:
        seg.pins -= 1
        if seg.pins > 0:
            return
        if seg.doomed:
            engine.layer.close(seg.handle)
            try:
                engine.layer.unlink(seg.path)
                if seg.kind == KIND_COMPACTED:
                    unlink_if_there(engine.layer, hint_path(seg.path))
                engine.layer.fsync_dir(engine.directory)
            except OSError as exc:
                engine.fail(StorageFailed(f"removing {seg.path} failed: {exc}"))
        elif engine.closed:
            engine.layer.close(seg.handle)


# -- choosing segments -------------------------------------------------------------------------


def _sealed(engine: EngineHost) -> list[Segment]:
    with engine.lock:
        return [s for s in engine.segments.values() if s.sealed and not s.doomed]


def _is_small(engine: EngineHost, seg: Segment) -> bool:
    return seg.size < engine.max_segment_bytes // SMALL_SEGMENT_FRACTION


def _all_candidates(engine: EngineHost) -> list[Segment]:
    sealed = _sealed(engine)
    small = [s for s in sealed if _is_small(engine, s)]
    picked = [s for s in sealed if s.dead_bytes > 0 or (len(small) > 1 and _is_small(engine, s))]
    if len(picked) == 1 and picked[0].dead_bytes == 0:
        return []
    return picked


def _dead_ratio(seg: Segment) -> float:
    return seg.dead_bytes / seg.size if seg.size else 0.0


def _background_candidates(engine: EngineHost, ratio: float | None = None) -> list[Segment]:
    threshold = engine.compact_dead_ratio if ratio is None else ratio
    return [s for s in _sealed(engine) if _dead_ratio(s) >= threshold]


def _worth_it(engine: EngineHost) -> bool:
    """Enough dead bytes in segments past the ratio, and more than after the last run."""
    dead = sum(s.dead_bytes for s in _background_candidates(engine))
    return dead >= engine.compact_min_dead_bytes + engine.compact_floor


def _groups(engine: EngineHost,
            candidates: Sequence[Segment]) -> Iterator[list[Segment]]:
    """Candidates oldest first, cut into groups whose live bytes fit in one segment."""
    group: list[Segment] = []
    live = 0
    for seg in sorted(candidates, key=lambda s: (s.min_seq, s.seg_id)):
        if group and live + seg.live_bytes > engine.max_segment_bytes:
            yield group
            group, live = [], 0
        group.append(seg)
        live += seg.live_bytes
    if group:
        yield group


# -- one group ---------------------------------------------------------------------------------


def _compact_group(engine: EngineHost, group: list[Segment],
                   stop: threading.Event | None) -> None:
    with engine.lock:
        if engine.closed or engine.failed:
            return
        for seg in group:
            seg.pins += 1
        ids = {s.seg_id for s in group}
        outside_min_seq = min((s.min_seq for s in engine.segments.values()
                               if s.seg_id not in ids), default=NO_SEQ)
    try:
        out = _start_output(engine, group)
        for seg in group:
            _copy_segment(engine, seg, out, outside_min_seq)
            if stop is not None and stop.is_set():
                _abandon(engine, out)
                return
        _commit_output(engine, out)
        _swap(engine, group, out)
    except OSError as exc:
        engine.fail(StorageFailed(f"{engine.directory}: compaction failed: {exc}"))
        raise StorageFailed(f"{engine.directory}: compaction failed: {exc}") from exc
    finally:
        for seg in group:
            release_segment(engine, seg)


def _start_output(engine: EngineHost, group: list[Segment]) -> _Output:
    seg_id = engine.allocate_segment_id()
    final = segment_path(engine.directory, engine.gen, seg_id, KIND_COMPACTED)
    applied = max(s.applied_index for s in group)
    replaced = sorted(s.seg_id for s in group)
    frame = encode_supersedes(replaced, applied)
    handle = engine.layer.open(temp_path(final), create=True)
    engine.layer.append(handle, frame)
    seg = Segment(seg_id, KIND_COMPACTED, final, handle, len(frame), overhead=len(frame),
                  applied_index=applied)
    return _Output(seg, replaced)


def _copy_segment(engine: EngineHost, seg: Segment, out: _Output,
                  outside_min_seq: int) -> None:
    layer = engine.layer
    result = scan_segment(seg.path, lambda n, off: layer.pread(seg.handle, n, off), seg.size,
                          tail_ok=False)
    entries = result.entries
    for start in range(0, len(entries), SELECT_CHUNK_ENTRIES):
        chunk = entries[start:start + SELECT_CHUNK_ENTRIES]
        kept = _select(engine, seg, chunk, outside_min_seq)
        if kept:
            _append(engine, seg, out, kept)


def _select(engine: EngineHost, seg: Segment, chunk: Sequence[Entry],
            outside_min_seq: int) -> list[tuple[Entry, Location | None]]:
    """Entries still needed: live ones (with their keydir location) and needed tombstones."""
    kept: list[tuple[Entry, Location | None]] = []
    with engine.lock:
        for entry in chunk:
            loc = engine.keydir.get(entry.key)
            if entry.tombstone:
                newer_put = loc is not None and loc[4] > entry.seq
                if not newer_put and outside_min_seq < entry.seq:
                    kept.append((entry, None))
            elif loc is not None and loc[0] == seg.seg_id and loc[1] == entry.value_offset:
                kept.append((entry, loc))
    return kept


def _append(engine: EngineHost, seg: Segment, out: _Output,
            kept: list[tuple[Entry, Location | None]]) -> None:
    layer = engine.layer
    items = []
    for entry, loc in kept:
        value = None if loc is None else layer.pread(seg.handle, entry.value_len,
                                                     entry.value_offset)
        items.append((entry.key, value, entry.expire_at_ms, entry.seq))
    frame, offsets = encode_frame(items, out.segment.applied_index, out.segment.size)
    layer.append(out.segment.handle, frame)
    out.segment.size += len(frame)
    for (entry, loc), offset in zip(kept, offsets, strict=True):
        out.segment.min_seq = min(out.segment.min_seq, entry.seq)
        out.hint.append(replace(entry, value_offset=offset,
                                value_len=0 if loc is None else entry.value_len))
        if loc is not None:
            out.copied.append((entry.key, loc, offset))


def _commit_output(engine: EngineHost, out: _Output) -> None:
    """Hint first (fsynced, renamed), then the output: the output's rename commits both."""
    layer = engine.layer
    seg = out.segment
    hint = hint_path(seg.path)
    handle = layer.open(temp_path(hint), create=True)
    try:
        layer.append(handle, encode_hint(seg.size, seg.applied_index, out.supersedes,
                                         out.hint))
        layer.fsync(handle)
    finally:
        layer.close(handle)
    layer.rename(temp_path(hint), hint)
    layer.fsync(seg.handle)
    layer.rename(temp_path(seg.path), seg.path)
    layer.fsync_dir(engine.directory)
    out.hint = []


def _abandon(engine: EngineHost, out: _Output) -> None:
    engine.layer.close(out.segment.handle)
    engine.layer.unlink(temp_path(out.segment.path))


def _swap(engine: EngineHost, group: list[Segment], out: _Output) -> None:
    new = out.segment
    with engine.lock:
        engine.segments[new.seg_id] = new
    for start in range(0, len(out.copied), SWAP_CHUNK_ENTRIES):
        with engine.lock:
            for key, loc, offset in out.copied[start:start + SWAP_CHUNK_ENTRIES]:
                if engine.keydir.replace_if(key, loc,
                                            (new.seg_id, offset, loc[2], loc[3], loc[4])):
                    size = entry_bytes(len(key), loc[2])
                    new.live_bytes += size
                    engine.segments[loc[0]].live_bytes -= size
    with engine.lock:
        for seg in group:
            del engine.segments[seg.seg_id]
            seg.doomed = True
        engine.counters["compactions"] += 1
        engine.compact_floor = sum(s.dead_bytes for s in _background_candidates(engine))

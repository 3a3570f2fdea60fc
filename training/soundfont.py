"""SoundFont 2 subsets: a smaller ``.sf2`` holding only some presets, the instruments they use
and those instruments' samples, byte for byte (renders through them are identical).

Used to take the renderer's presets (``training.render.GM_PROGRAMS`` and their alternatives) to
a machine without the SoundFont packages: FluidR3_GM's 148 MB hold 23 MB of samples for them.
SF2 only (16-bit ``smpl``, optional ``sm24``); SF3's compressed samples are not handled.

Layout (SoundFont 2.04): ``RIFF sfbk`` = ``LIST INFO`` + ``LIST sdta`` (``smpl``, ``sm24``) +
``LIST pdta`` with the record tables ``phdr pbag pmod pgen inst ibag imod igen shdr``, each
closed by a terminal record; presets point to bags, bags to generators and modulators, the
generator ``instrument`` (41) to an instrument, ``sampleID`` (53) to a sample header.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from training.corpus import check_soundfont

RECORD = {"phdr": "<20sHHHIII", "pbag": "<HH", "pmod": "<HHhHH", "pgen": "<HH",
          "inst": "<20sH", "ibag": "<HH", "imod": "<HHhHH", "igen": "<HH",
          "shdr": "<20sIIIIIBbHH"}
"""Record layout of each ``pdta`` table (generator amounts read as unsigned words)."""
GEN_INSTRUMENT, GEN_SAMPLE_ID = 41, 53
PAD_SAMPLES = 46
"""Zero samples the specification asks for after each sample."""


class SoundFontError(ValueError):
    """Not a SoundFont 2 file this module can read, or a preset it does not hold."""


def _chunks(buf: bytes, start: int, end: int) -> Iterable[tuple[bytes, int, int]]:
    """``(id, data offset, size)`` of the RIFF chunks in ``buf[start:end]``."""
    while start + 8 <= end:
        cid, size = struct.unpack_from("<4sI", buf, start)
        yield cid, start + 8, size
        start += 8 + size + (size & 1)


def _read(path: Path) -> tuple[bytes, dict[str, tuple[int, int]], dict[str, list[tuple]]]:
    data = path.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise SoundFontError(f"{path}: not a SoundFont 2 file (RIFF sfbk)")
    spans: dict[str, tuple[int, int]] = {}
    for cid, off, size in _chunks(data, 12, len(data)):
        if cid == b"LIST":
            kind = data[off : off + 4].decode("latin-1")
            spans[kind] = (off - 8, size + 8)
            for sub, o2, s2 in _chunks(data, off + 4, off + size):
                spans[sub.decode("latin-1")] = (o2, s2)
    missing = [k for k in ("INFO", "smpl", *RECORD) if k not in spans]
    if missing:
        raise SoundFontError(f"{path}: missing chunks {missing} (SF3 and other formats are "
                             "not handled)")
    major = struct.unpack_from("<H", data, spans["ifil"][0])[0] if "ifil" in spans else 2
    if major != 2:
        raise SoundFontError(f"{path}: SoundFont version {major} (SF3 and other formats are "
                             "not handled)")
    tables = {}
    for name, fmt in RECORD.items():
        off, size = spans[name]
        n = struct.calcsize(fmt)
        tables[name] = [struct.unpack_from(fmt, data, off + i * n) for i in range(size // n)]
    return data, spans, tables


def _chunk(cid: str, payload: bytes) -> bytes:
    return struct.pack("<4sI", cid.encode("latin-1"), len(payload)) + payload + (
        b"\0" if len(payload) & 1 else b"")


def _zone_copy(bags: list[tuple], gens: list[tuple], mods: list[tuple], first: int, last: int,
               link: int, remap: dict[int, int], out: dict[str, list[tuple]], prefix: str) -> int:
    """Copy bags ``first..last-1`` with their generators and modulators into ``out``, the
    generator ``link`` (instrument / sample id) renumbered by ``remap``; returns the new index
    of the first bag."""
    start = len(out[prefix + "bag"])
    for b in range(first, last):
        out[prefix + "bag"].append((len(out[prefix + "gen"]), len(out[prefix + "mod"])))
        for g in range(bags[b][0], bags[b + 1][0]):
            oper, amount = gens[g]
            out[prefix + "gen"].append((oper, remap[amount] if oper == link else amount))
        out[prefix + "mod"].extend(mods[bags[b][1] : bags[b + 1][1]])
    return start


def subset_soundfont(src: str | os.PathLike, dst: str | os.PathLike,
                     presets: Iterable[tuple[int, int]]) -> dict[str, int]:
    """Write to ``dst`` the SoundFont ``src`` reduced to ``presets`` (``(bank, program)``
    pairs), atomically. Raises :class:`SoundFontError` for a preset ``src`` lacks, ValueError
    for a reserved SoundFont. Returns counts: presets, instruments, samples, sample bytes."""
    src_path = check_soundfont(src)
    data, spans, t = _read(src_path)
    want = set(presets)
    chosen = [i for i, h in enumerate(t["phdr"][:-1]) if (h[2], h[1]) in want]
    found = {(t["phdr"][i][2], t["phdr"][i][1]) for i in chosen}
    if want - found:
        raise SoundFontError(f"{src_path.name} has no preset(s) {sorted(want - found)} "
                             "(bank, program)")

    def linked(bags, gens, first, last, link) -> list[int]:
        return sorted({gens[g][1] for b in range(first, last)
                       for g in range(bags[b][0], bags[b + 1][0]) if gens[g][0] == link})

    insts = sorted({i for p in chosen for i in linked(
        t["pbag"], t["pgen"], t["phdr"][p][3], t["phdr"][p + 1][3], GEN_INSTRUMENT)})
    samples = {s for i in insts for s in linked(
        t["ibag"], t["igen"], t["inst"][i][1], t["inst"][i + 1][1], GEN_SAMPLE_ID)}
    for s in list(samples):  # stereo partners (and linked chains) come along
        while (link := t["shdr"][s][8]) not in samples and t["shdr"][s][9] & 0x0E:
            samples.add(link)
            s = link
    samples_sorted = sorted(samples)
    inst_map = {old: new for new, old in enumerate(insts)}
    sample_map = {old: new for new, old in enumerate(samples_sorted)}

    out: dict[str, list[tuple]] = {k: [] for k in RECORD}
    for p in chosen:
        h = t["phdr"][p]
        bag = _zone_copy(t["pbag"], t["pgen"], t["pmod"], h[3], t["phdr"][p + 1][3],
                         GEN_INSTRUMENT, inst_map, out, "p")
        out["phdr"].append((h[0], h[1], h[2], bag, h[4], h[5], h[6]))
    for i in insts:
        h = t["inst"][i]
        bag = _zone_copy(t["ibag"], t["igen"], t["imod"], h[1], t["inst"][i + 1][1],
                         GEN_SAMPLE_ID, sample_map, out, "i")
        out["inst"].append((h[0], bag))

    smpl_off, _ = spans["smpl"]
    sm24 = spans.get("sm24")
    pcm, low = bytearray(), bytearray()
    for s in samples_sorted:
        name, start, end, loop_start, loop_end, rate, pitch, corr, link, kind = t["shdr"][s]
        new = len(pcm) // 2
        pcm += data[smpl_off + 2 * start : smpl_off + 2 * end] + bytes(2 * PAD_SAMPLES)
        if sm24 is not None:
            low += data[sm24[0] + start : sm24[0] + end] + bytes(PAD_SAMPLES)
        shift = new - start
        out["shdr"].append((name, new, new + end - start, loop_start + shift, loop_end + shift,
                            rate, pitch, corr, sample_map.get(link, 0), kind))

    # terminal records: the last bag / generator / modulator indices, then zeros
    out["phdr"].append((b"EOP", 0, 0, len(out["pbag"]), 0, 0, 0))
    out["pbag"].append((len(out["pgen"]), len(out["pmod"])))
    out["pmod"].append((0, 0, 0, 0, 0))
    out["pgen"].append((0, 0))
    out["inst"].append((b"EOI", len(out["ibag"])))
    out["ibag"].append((len(out["igen"]), len(out["imod"])))
    out["imod"].append((0, 0, 0, 0, 0))
    out["igen"].append((0, 0))
    out["shdr"].append((b"EOS", 0, 0, 0, 0, 0, 0, 0, 0, 0))

    info_off, info_size = spans["INFO"]
    sdta = b"sdta" + _chunk("smpl", bytes(pcm)) + (_chunk("sm24", bytes(low)) if sm24 else b"")
    pdta = b"pdta" + b"".join(
        _chunk(name, b"".join(struct.pack(fmt, *r) for r in out[name]))
        for name, fmt in RECORD.items())
    body = b"sfbk" + data[info_off : info_off + info_size] + _chunk("LIST", sdta) + _chunk(
        "LIST", pdta)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_chunk("RIFF", body))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"presets": len(chosen), "instruments": len(insts), "samples": len(samples_sorted),
            "sample_bytes": len(pcm)}

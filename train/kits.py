"""Drum kits and instrument sound sets that `unetsep data` can render with, found on this machine.

Two kinds of drum kit:
- "sf2": a preset of a SoundFont, played by FluidSynth (the General MIDI kits, bank 128, of every
  installed sound set; the AVL recorded kits, bank 0).
- "samples": recorded one-shot samples triggered here with numpy (Hydrogen drumkits, Sonic Pi's
  drum hits): velocity layers, round robin, open hat and crash cut where the note ends.
Instrument sound sets are General MIDI SoundFonts. Each entry names the Debian package that
provides it, so a missing one is an error that says what to install.
"""
from __future__ import annotations

import fnmatch
import re
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..runtime.contract import SAMPLE_RATE
from ..runtime.errors import UserError
from .compose import (CLAP, CRASH, HAT_CLOSED, HAT_OPEN, HAT_PEDAL, KICK, RIDE, SIDESTICK, SNARE,
                      SNARE2, TOMS)

SF2_DIRS = ("/usr/share/sounds/sf2", "/usr/share/soundfonts", "/opt/homebrew/share/soundfonts",
            "/usr/local/share/soundfonts")
HYDROGEN_DIRS = ("/usr/share/hydrogen/data/drumkits", "~/.hydrogen/data/drumkits")
SONIC_PI_DIR = "/usr/share/sonic-pi/samples"
TRAIN_DATA_FIX = "or ./scripts/setup.sh --train-data for all of them"

# name -> (file names, Debian package). FluidR3_GS.sf2 (fluid-soundfont-gs) only adds GS variation
# presets to FluidR3_GM, so it is not a sound set of its own. sf_GMbank is csound's small sampled
# GM/GS bank (an EMU8000-era set); OPL-3_FM_128M plays every GM program as Yamaha OPL3 FM synthesis,
# with one drum kit (standard) only.
SOUNDSETS = {
    "FluidR3_GM": (("FluidR3_GM.sf2",), "fluid-soundfont-gm"),
    "MuseScore_General": (("MuseScore_General_Full.sf2", "MuseScore_General.sf2",
                           "MuseScore_General.sf3"), "musescore-general-soundfont-lossless"),
    "TimGM6mb": (("TimGM6mb.sf2",), "timgm6mb-soundfont"),
    "sf_GMbank": (("sf_GMbank.sf2",), "csound-soundfont"),
    "OPL-3_FM_128M": (("OPL-3_FM_128M.sf2",), "opl3-soundfont"),
}
# General MIDI drum kits: bank 128 presets of a GM sound set.
GM_KITS = {0: "standard", 8: "room", 16: "power", 24: "electronic", 25: "tr808", 32: "jazz",
           40: "brush", 48: "orchestra"}
AVL_KITS = {"Black_Pearl": "Black_Pearl_4_LV2.sf2", "Red_Zeppelin": "Red_Zeppelin_4_LV2.sf2"}
KIT_PACKAGES = {"hydrogen:": "hydrogen-drumkits", "avl:": "avldrums.lv2-soundfont",
                "sonic-pi": "sonic-pi-samples"}
# When a kit has no instrument for a key, play the nearest one it has.
FALLBACK = {HAT_OPEN: HAT_CLOSED, HAT_PEDAL: HAT_CLOSED, CLAP: SNARE, SIDESTICK: SNARE,
            SNARE2: SNARE, RIDE: HAT_CLOSED, CRASH: RIDE, **{t: SNARE for t in TOMS}}
CHOKED = (HAT_OPEN, CRASH)  # keys whose sound stops where the note ends (hand or hat pedal)


@dataclass(frozen=True)
class SoundSet:
    name: str
    path: str


@dataclass(frozen=True)
class Kit:
    name: str
    kind: str  # "sf2" | "samples"
    path: str  # the .sf2, a Hydrogen kit folder, or Sonic Pi's sample folder
    bank: int = 128
    preset: int = 0
    recorded: bool = False


def _find_sf2(names) -> str | None:
    for d in SF2_DIRS:
        for n in names:
            if (Path(d) / n).is_file():
                return str(Path(d) / n)
    return None


def find_soundsets() -> list[SoundSet]:
    """The General MIDI sound sets installed here, in a fixed order."""
    found = []
    for name, (files, _) in SOUNDSETS.items():
        path = _find_sf2(files)
        if path:
            found.append(SoundSet(name, path))
    return found


@lru_cache(maxsize=None)
def sf2_presets(path: str) -> frozenset[tuple[int, int]] | None:
    """The (bank, program) presets a SoundFont defines, read from its preset headers (pdta/phdr)
    without loading any samples; None if the file cannot be read that way (e.g. an .sf3)."""
    try:
        with open(path, "rb") as f:
            riff, size, form = struct.unpack("<4sI4s", f.read(12))
            if riff != b"RIFF" or form != b"sfbk":
                return None
            while f.tell() < size + 8:
                cid, csize = struct.unpack("<4sI", f.read(8))
                if cid == b"LIST" and f.read(4) == b"pdta":
                    end = f.tell() + csize - 4
                    while f.tell() < end:
                        sid, ssize = struct.unpack("<4sI", f.read(8))
                        if sid == b"phdr":
                            data = f.read(ssize)
                            # 38-byte records: name[20], preset, bank, ...; the last one is "EOP".
                            return frozenset(struct.unpack_from("<HH", data, i + 20)[::-1]
                                             for i in range(0, len(data) - 38, 38))
                        f.seek(ssize + (ssize & 1), 1)
                    return None
                f.seek(csize + (csize & 1) - (4 if cid == b"LIST" else 0), 1)
    except (OSError, struct.error):
        return None
    return None


def find_kits(soundsets: list[SoundSet]) -> list[Kit]:
    """Every drum kit installed here: the GM kits of `soundsets` (those each one defines), AVL,
    Hydrogen and Sonic Pi."""
    kits = []
    for s in soundsets:
        presets = sf2_presets(s.path)
        kits += [Kit(f"{s.name}:{k}", "sf2", s.path, 128, p) for p, k in GM_KITS.items()
                 if presets is None or (128, p) in presets]
    for name, file in AVL_KITS.items():
        path = _find_sf2((file,))
        if path:
            kits.append(Kit(f"avl:{name}", "sf2", path, 0, 0, recorded=True))
    for d in HYDROGEN_DIRS:
        for xml in sorted(Path(d).expanduser().glob("*/drumkit.xml")):
            if _playable(hydrogen_mapping(str(xml.parent))):
                kits.append(Kit(f"hydrogen:{xml.parent.name}", "samples", str(xml.parent),
                                recorded=True))
    if Path(SONIC_PI_DIR, "drum_bass_hard.flac").is_file():
        kits.append(Kit("sonic-pi", "samples", SONIC_PI_DIR, recorded=True))
    return kits


def _playable(mapping: dict) -> bool:
    return KICK in mapping and SNARE in mapping and (HAT_CLOSED in mapping or RIDE in mapping)


def _select(wanted: list[str] | None, have: dict[str, object], what: str, package_of) -> list:
    """The entries of `have` named by `wanted` (names, fnmatch patterns or paths); all if None."""
    if not wanted:
        return list(have.values())
    out = []
    for w in wanted:
        hits = [v for k, v in have.items() if fnmatch.fnmatchcase(k, w)]
        if not hits:
            pkg = package_of(w)
            fix = (f"apt-get install {pkg} ({TRAIN_DATA_FIX})" if pkg else
                   f"choose from: {', '.join(have) or 'none installed'}")
            raise UserError(f"{what} {w!r} is not installed: {fix}")
        out += [h for h in hits if h not in out]
    return out


def select_soundsets(wanted: list[str] | None) -> list[SoundSet]:
    """Sound sets by name (see SOUNDSETS) or .sf2 path; default: every one installed."""
    have = {s.name: s for s in find_soundsets()}
    paths = [w for w in wanted or [] if w.endswith((".sf2", ".sf3"))]
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"SoundFont not found ({p}): pass an existing .sf2 to --soundfonts")
    named = [w for w in wanted or [] if w not in paths]
    sets = [SoundSet(Path(p).stem, str(Path(p).resolve())) for p in paths]
    if named or not paths:
        sets += _select(named or None, have, "sound set",
                        lambda w: next((pkg for n, (_, pkg) in SOUNDSETS.items()
                                        if fnmatch.fnmatchcase(n, w)), None))
    if not sets:
        raise UserError("no General MIDI SoundFont found: apt-get install fluid-soundfont-gm "
                        f"({TRAIN_DATA_FIX}), or pass --soundfonts PATH.sf2")
    return sets


def select_kits(wanted: list[str] | None, soundsets: list[SoundSet]) -> list[Kit]:
    """Kits by name or pattern (e.g. 'hydrogen:*', 'FluidR3_GM:jazz'), Hydrogen kit folder or
    .sf2 path (its first preset); default: every kit installed."""
    have = {k.name: k for k in find_kits(soundsets)}
    kits, named = [], []
    for w in wanted or []:
        if Path(w, "drumkit.xml").is_file():
            kits.append(Kit(f"hydrogen:{Path(w).name}", "samples", str(Path(w).resolve()), recorded=True))
        elif w.endswith(".sf2") and Path(w).is_file():
            kits.append(Kit(Path(w).stem, "sf2", str(Path(w).resolve()), 128, 0))
        else:
            named.append(w)
    if named or not kits:
        def package_of(w):
            return next((pkg for pre, pkg in KIT_PACKAGES.items() if w.startswith(pre)),
                        SOUNDSETS.get(w.split(":")[0], (None, None))[1])
        kits += _select(named or None, have, "drum kit", package_of)
    for k in kits:
        if k.kind == "samples" and not _playable(hydrogen_mapping(k.path) if k.path != SONIC_PI_DIR
                                                  else sonic_pi_mapping()):
            raise UserError(f"drum kit {k.path} has no kick, snare and hi-hat/ride by name; "
                            f"choose another --kits")
    return kits


# ---- sample kits -------------------------------------------------------------------------------

@dataclass
class Layer:
    lo: float  # velocity range, 0..1
    hi: float
    gain: float
    file: str


@dataclass
class Instrument:
    name: str
    gain: float
    layers: list[Layer] = field(default_factory=list)


def _gm_key(name: str) -> int | None:
    """GM drum key for a Hydrogen instrument name ('Closed HH', 'Pearl Tom Floor', ...), or None."""
    n = name.lower()
    words = set(re.findall(r"[a-z]+", n))
    if re.search(r"kick|bass ?drum|\bbd\b", n):
        return KICK
    if "clap" in n:
        return CLAP
    if re.search(r"side ?stick|rim ?click|\bstick\b", n):
        return SIDESTICK
    if "snare" in n:
        return None if "roll" in n else SNARE
    if re.search(r"hi-?hat|\bhh\b|\bhat\b", n):
        if words & {"pedal", "pd", "foot"}:
            return HAT_PEDAL
        if words & {"open", "opened", "op"} and "semi" not in n:
            return HAT_OPEN
        if words & {"closed", "cl", "close"} or not words & {"swish", "choke", "free", "semiopen"}:
            return HAT_CLOSED
        return None
    if re.search(r"crash|splash|china", n):
        return CRASH
    if "ride" in n:
        return RIDE
    if "tom" in n:
        if words & {"floor", "low", "lo"}:
            return TOMS[0]
        if words & {"mid", "middle"} or "2" in n:
            return TOMS[2]
        return TOMS[4]
    return None


@lru_cache(maxsize=None)
def hydrogen_mapping(folder: str) -> dict[int, list[Instrument]]:
    """{GM key: instruments} of a Hydrogen kit, by instrument names; both drumkit.xml formats
    (velocity <layer>s, or one <filename> per instrument)."""
    try:
        root = ET.parse(Path(folder) / "drumkit.xml").getroot()
    except (OSError, ET.ParseError) as e:
        raise UserError(f"cannot read the Hydrogen kit {folder}/drumkit.xml ({e}); choose another --kits")
    ns = re.match(r"\{.*\}", root.tag)
    ns = ns.group(0) if ns else ""
    mapping: dict[int, list[Instrument]] = {}
    for inst in root.iter(f"{ns}instrument"):
        name = inst.findtext(f"{ns}name") or ""
        key = _gm_key(name)
        if key is None:
            continue
        gain = float(inst.findtext(f"{ns}volume") or 1) * float(inst.findtext(f"{ns}gain") or 1)
        ins = Instrument(name, gain)
        for layer in inst.iter(f"{ns}layer"):
            ins.layers.append(Layer(float(layer.findtext(f"{ns}min") or 0),
                                    float(layer.findtext(f"{ns}max") or 1),
                                    float(layer.findtext(f"{ns}gain") or 1),
                                    str(Path(folder) / (layer.findtext(f"{ns}filename") or ""))))
        direct = inst.findtext(f"{ns}filename")
        if not ins.layers and direct:
            ins.layers.append(Layer(0.0, 1.0, 1.0, str(Path(folder) / direct)))
        ins.layers = [lay for lay in ins.layers if Path(lay.file).is_file()]
        if ins.layers:
            mapping.setdefault(key, []).append(ins)
    return mapping


@lru_cache(maxsize=None)
def sonic_pi_mapping() -> dict[int, list[Instrument]]:
    """Sonic Pi's drum hits as a kit: soft and hard samples as two velocity layers."""
    def inst(name, soft, hard=None):
        f = lambda s: f"{SONIC_PI_DIR}/{s}.flac"  # noqa: E731
        layers = [Layer(0.0, 0.6, 1.0, f(soft)), Layer(0.6, 1.0, 1.0, f(hard))] if hard else \
            [Layer(0.0, 1.0, 1.0, f(soft))]
        return [Instrument(name, 1.0, layers)]
    return {KICK: inst("kick", "drum_bass_soft", "drum_bass_hard"),
            SNARE: inst("snare", "drum_snare_soft", "drum_snare_hard"),
            HAT_CLOSED: inst("closed hat", "drum_cymbal_closed"),
            HAT_OPEN: inst("open hat", "drum_cymbal_open"),
            HAT_PEDAL: inst("pedal hat", "drum_cymbal_pedal"),
            CRASH: inst("crash", "drum_splash_soft", "drum_cymbal_hard"),
            RIDE: inst("ride", "drum_cymbal_soft"),
            TOMS[0]: inst("low tom", "drum_tom_lo_soft", "drum_tom_lo_hard"),
            TOMS[2]: inst("mid tom", "drum_tom_mid_soft", "drum_tom_mid_hard"),
            TOMS[4]: inst("high tom", "drum_tom_hi_soft", "drum_tom_hi_hard")}


@lru_cache(maxsize=512)
def _sample(file: str, rate: int) -> np.ndarray:
    """One sample file as float32 (samples, 2) at `rate` (decoded once per process)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    a, sr = sf.read(file, dtype="float32", always_2d=True)
    if sr != rate:
        g = np.gcd(int(sr), rate)
        a = resample_poly(a, rate // g, int(sr) // g, axis=0).astype(np.float32)
    return np.repeat(a, 2, axis=1) if a.shape[1] == 1 else a[:, :2]


def render_samples(kit: Kit, notes, n: int, rng: np.random.Generator,
                   rate: int = SAMPLE_RATE) -> np.ndarray:
    """Drum notes (compose.Note, GM keys) played from a sample kit: float32 (n, 2).

    Per key, one instrument of the kit is drawn for the song; each hit takes the velocity layer
    that covers its velocity, cycling (round robin) when several do. Open hat and crash stop with
    a 10 ms fade where their note ends (the composer ends them at the next closed/pedal hat, or a
    hand choke).
    """
    mapping = sonic_pi_mapping() if kit.path == SONIC_PI_DIR else hydrogen_mapping(kit.path)
    out = np.zeros((n, 2), np.float32)
    chosen: dict[int, Instrument] = {}
    rr: dict[tuple, int] = {}
    fade = int(0.01 * rate)
    for note in sorted(notes, key=lambda x: x.start):
        key = note.pitch
        while key not in mapping and key in FALLBACK:
            key = FALLBACK[key]
        if key not in mapping:
            continue
        if key not in chosen:
            options = mapping[key]
            chosen[key] = options[int(rng.integers(len(options)))]
        ins = chosen[key]
        v = note.velocity / 127
        layers = [lay for lay in ins.layers if lay.lo <= v <= lay.hi] or \
            [min(ins.layers, key=lambda lay: min(abs(v - lay.lo), abs(v - lay.hi)))]
        i = rr.get((key, len(layers)), 0)
        rr[(key, len(layers))] = i + 1
        layer = layers[i % len(layers)]
        s = _sample(layer.file, rate)
        start = int(note.start * rate)
        if start >= n:
            continue
        hit = s[: n - start] * (ins.gain * layer.gain * v)
        if note.pitch in CHOKED:
            stop = int((note.end - note.start) * rate)
            if stop < len(hit):
                hit = hit[: stop + fade].copy()
                hit[stop:] *= np.linspace(1, 0, len(hit) - stop, dtype=np.float32)[:, None]
        out[start:start + len(hit)] += hit
    return out

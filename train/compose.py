"""Procedural multitrack songs: a drum groove, a bass line, harmony and a lead, as note lists.

Like Slakh2100, but composed here rather than taken from a MIDI corpus, so that the default dataset
needs no download. A song is a list of `Part`s; each part is one General MIDI program on one MIDI
channel and belongs to one MUSDB stem (drums, bass, other, vocals). Everything is drawn from one
`numpy.random.Generator`, so a song is a pure function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# General MIDI drum kits as bank-128 presets in FluidR3_GM: standard, room, power, electronic,
# TR-808, jazz, brush, orchestra.
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)
BASS_PROGRAMS = tuple(range(32, 40))  # acoustic, finger, pick, fretless, slap 1/2, synth 1/2
HARMONY_PROGRAMS = (0, 1, 2, 4, 5, 16, 17, 18, 19, 24, 25, 26, 27, 29, 48, 49, 50, 51, 61, 80, 81,
                    88, 89, 90, 92, 94)  # pianos, organs, guitars, strings, brass, synths, pads
VOICE_PROGRAMS = (52, 53, 54, 85, 91, 73, 65)  # choir aahs, voice oohs, synth voice, lead voice...

# GM percussion keys
KICK, SIDESTICK, SNARE, CLAP, SNARE2 = 36, 37, 38, 39, 40
HAT_CLOSED, HAT_PEDAL, HAT_OPEN, CRASH, RIDE = 42, 44, 46, 49, 51
TOMS = (41, 43, 45, 47, 48, 50)

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
# Progressions as scale degrees (0-based), each chord lasting one bar.
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (1, 4, 0, 0), (0, 3, 4, 3), (0, 0, 3, 4),
                (0, 6, 5, 4), (0, 2, 3, 4))


@dataclass
class Note:
    start: float  # seconds
    end: float  # seconds
    pitch: int
    velocity: int


@dataclass
class Part:
    stem: str  # drums | bass | other | vocals
    program: int
    bank: int = 0
    channel: int = 0
    notes: list[Note] = field(default_factory=list)


@dataclass
class Song:
    name: str
    seconds: float
    bpm: float
    parts: list[Part]


def _vel(rng: np.random.Generator, base: int, spread: int = 12) -> int:
    return int(np.clip(base + rng.integers(-spread, spread + 1), 1, 127))


def _drum_groove(rng: np.random.Generator) -> dict[int, list[tuple[int, int]]]:
    """One bar of 16 sixteenth-note steps: {drum key: [(step, velocity), ...]}."""
    style = rng.choice(["rock", "funk", "halftime", "disco", "shuffle", "breakbeat", "jazz"])
    g: dict[int, list[tuple[int, int]]] = {}
    hat = RIDE if style == "jazz" or rng.random() < 0.15 else HAT_CLOSED
    if style == "rock":
        g[KICK] = [(0, 110), (8, 105)] + ([(10, 90)] if rng.random() < 0.5 else [])
        g[SNARE] = [(4, 110), (12, 110)]
        g[hat] = [(s, 80 + 15 * (s % 4 == 0)) for s in range(0, 16, 2)]
    elif style == "funk":
        g[KICK] = [(0, 110), (3, 85), (6, 95), (10, 100)]
        g[SNARE] = [(4, 110), (12, 110), (7, 45), (14, 50)]
        g[hat] = [(s, 70 + 20 * (s % 2 == 0)) for s in range(16)]
    elif style == "halftime":
        g[KICK] = [(0, 110), (3, 80), (11, 90)]
        g[SNARE] = [(8, 115)]
        g[hat] = [(s, 80) for s in range(0, 16, 2)]
    elif style == "disco":
        g[KICK] = [(s, 110) for s in (0, 4, 8, 12)]
        g[rng.choice([SNARE, CLAP])] = [(4, 100), (12, 100)]
        g[HAT_OPEN] = [(s, 85) for s in (2, 6, 10, 14)]
        g[HAT_CLOSED] = [(s, 65) for s in (0, 4, 8, 12)]
    elif style == "shuffle":
        g[KICK] = [(0, 110), (8, 100), (11, 80)]
        g[SNARE] = [(4, 110), (12, 110)]
        g[hat] = [(s, 85 - 20 * (s % 4 != 0)) for s in (0, 3, 4, 7, 8, 11, 12, 15)]
    elif style == "breakbeat":
        g[KICK] = [(0, 110), (2, 95), (10, 105)]
        g[SNARE] = [(4, 110), (9, 60), (12, 110), (15, 70)]
        g[hat] = [(s, 75) for s in range(0, 16, 2)]
    else:  # jazz
        g[RIDE] = [(s, 85 - 15 * (s % 4 == 3)) for s in (0, 4, 7, 8, 12, 15)]
        g[HAT_PEDAL] = [(4, 70), (12, 70)]
        g[KICK] = [(0, 60)] + ([(10, 55)] if rng.random() < 0.5 else [])
        g[SIDESTICK] = [(int(rng.choice([6, 14, 11])), 60)]
    return g


def _drum_part(rng: np.random.Generator, n_bars: int, bar: float, kit: int) -> Part:
    part = Part("drums", program=kit, bank=128, channel=9)
    groove = _drum_groove(rng)
    step = bar / 16
    jitter = step * 0.04
    fill_every = int(rng.choice([4, 8]))
    ghosts = rng.random() < 0.5
    for b in range(n_bars):
        t0 = b * bar
        is_fill = (b % fill_every) == fill_every - 1 and rng.random() < 0.8
        for key, hits in groove.items():
            for s, v in hits:
                if is_fill and s >= 8:
                    continue
                t = t0 + s * step + rng.normal(0, jitter)
                part.notes.append(Note(max(t, 0.0), t + step, key, _vel(rng, v)))
        if is_fill:  # toms and snare down the kit over the last half bar
            toms = sorted(rng.choice(TOMS, size=3, replace=False), reverse=True)
            for i, s in enumerate(range(8, 16, int(rng.choice([1, 2])))):
                key = SNARE if rng.random() < 0.3 else int(toms[min(i * 3 // 8, 2)])
                t = t0 + s * step
                part.notes.append(Note(t, t + step, key, _vel(rng, 100)))
        if b % (fill_every * 2) == 0 or (b > 0 and (b - 1) % fill_every == fill_every - 1):
            # A crash rings for two bars, or now and then is grabbed by the hand (choke).
            end = t0 + (rng.uniform(0.1, 0.4) if rng.random() < 0.15 else 2 * bar)
            part.notes.append(Note(t0, end, CRASH, _vel(rng, 105)))
        if ghosts and not is_fill:  # quiet snare ghost notes between the backbeats
            for s in rng.choice([1, 3, 6, 7, 9, 11, 14, 15], size=int(rng.integers(1, 4)), replace=False):
                t = t0 + int(s) * step + rng.normal(0, jitter)
                part.notes.append(Note(max(t, 0.0), t + step, SNARE, _vel(rng, 32, 10)))
    _choke_open_hats(part.notes)
    return part


def _choke_open_hats(notes: list[Note]) -> None:
    """An open hat rings until the next closed or pedal hat closes it (its note ends there)."""
    closes = sorted(n.start for n in notes if n.pitch in (HAT_CLOSED, HAT_PEDAL))
    for n in notes:
        if n.pitch == HAT_OPEN:
            later = [t for t in closes if t > n.start + 1e-3]
            n.end = later[0] if later else n.start + 1.0


def _chord_tones(root: int, scale: tuple[int, ...], degree: int) -> list[int]:
    """Triad on a scale degree, as semitones above the key root."""
    return [scale[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]


def _bass_part(rng, n_bars, bar, root, scale, prog) -> Part:
    part = Part("bass", program=int(rng.choice(BASS_PROGRAMS)), channel=0)
    pattern = rng.choice(["roots", "eighths", "fifths", "syncopated"])
    step = bar / 8
    for b in range(n_bars):
        chord = _chord_tones(root, scale, prog[b % len(prog)])
        base = 28 + (root % 12) + chord[0]
        if base > 45:
            base -= 12
        if pattern == "roots":
            steps = [(0, 4, base), (4, 4, base)]
        elif pattern == "eighths":
            steps = [(s, 1, base) for s in range(8)]
        elif pattern == "fifths":
            fifth = base + chord[2] - chord[0]
            steps = [(0, 2, base), (2, 2, fifth), (4, 2, base + 12), (6, 2, fifth)]
        else:
            steps = [(0, 3, base), (3, 1, base), (5, 2, base + 12), (7, 1, base)]
        for s, dur, pitch in steps:
            t = b * bar + s * step
            part.notes.append(Note(t, t + dur * step * 0.9, int(pitch), _vel(rng, 95)))
    return part


def _harmony_part(rng, n_bars, bar, root, scale, prog, channel) -> Part:
    part = Part("other", program=int(rng.choice(HARMONY_PROGRAMS)), channel=channel)
    style = rng.choice(["block", "halves", "arpeggio", "stabs"])
    octave = 48 + 12 * int(rng.integers(0, 2))
    for b in range(n_bars):
        tones = [octave + (root % 12) + c for c in _chord_tones(root, scale, prog[b % len(prog)])]
        t0 = b * bar
        if style == "block":
            hits = [(0.0, 1.0, tones)]
        elif style == "halves":
            hits = [(0.0, 0.5, tones), (0.5, 0.5, tones)]
        elif style == "arpeggio":
            seq = tones + [tones[1]]
            hits = [(i / 8, 1 / 8, [seq[i % 4]]) for i in range(8)]
        else:
            hits = [(p, 0.1, tones) for p in (0.125, 0.375, 0.625, 0.875)]
        for off, dur, chord in hits:
            for pitch in chord:
                part.notes.append(Note(t0 + off * bar, t0 + (off + dur) * bar * 0.97, pitch,
                                       _vel(rng, 75)))
    return part


def _lead_part(rng, n_bars, bar, root, scale, prog, channel) -> Part:
    part = Part("vocals", program=int(rng.choice(VOICE_PROGRAMS)), channel=channel)
    pool = [60 + (root % 12) + d + 12 * o for o in (0, 1) for d in scale]
    pool = [p for p in pool if 57 <= p <= 81]
    idx = int(rng.integers(0, len(pool)))
    step = bar / 8
    for b in range(n_bars):
        if b % 4 == 3 and rng.random() < 0.5:
            continue  # breathe between phrases
        s = 0
        chord = {(root % 12 + c) % 12 for c in _chord_tones(root, scale, prog[b % len(prog)])}
        while s < 8:
            dur = int(rng.choice([1, 2, 2, 3, 4]))
            if rng.random() < 0.2:
                s += dur
                continue
            idx = int(np.clip(idx + rng.integers(-2, 3), 0, len(pool) - 1))
            if s % 4 == 0:  # strong beats land on chord tones
                near = [i for i, p in enumerate(pool) if p % 12 in chord]
                idx = min(near, key=lambda i: abs(i - idx)) if near else idx
            t = b * bar + s * step
            part.notes.append(Note(t, t + min(dur, 8 - s) * step * 0.95, pool[idx], _vel(rng, 90)))
            s += dur
    return part


def compose(name: str, seconds: float, rng: np.random.Generator) -> Song:
    """A random song of `seconds` length: drums, bass, one or two harmony parts and a lead."""
    bpm = float(rng.uniform(70, 180))
    bar = 4 * 60.0 / bpm
    n_bars = int(np.ceil(seconds / bar)) + 1
    root = int(rng.integers(0, 12))
    scale = MAJOR if rng.random() < 0.5 else MINOR
    prog = PROGRESSIONS[int(rng.integers(0, len(PROGRESSIONS)))]
    parts = [
        _drum_part(rng, n_bars, bar, int(rng.choice(DRUM_KITS))),
        _bass_part(rng, n_bars, bar, root, scale, prog),
        _harmony_part(rng, n_bars, bar, root, scale, prog, channel=1),
        _lead_part(rng, n_bars, bar, root, scale, prog, channel=3),
    ]
    if rng.random() < 0.6:
        parts.append(_harmony_part(rng, n_bars, bar, root, scale, prog, channel=2))
    for p in parts:  # nothing sounds past the end of the song
        p.notes = [n for n in p.notes if n.start < seconds]
    return Song(name=name, seconds=seconds, bpm=bpm, parts=parts)

"""Kits, sound sets, mixing levels, the held-out split and training augmentation."""
from __future__ import annotations

import json
import struct

import numpy as np
import soundfile as sf

from conftest import unetsep
from unetsep.runtime.contract import SAMPLE_RATE, TARGETS
from unetsep.train.augment import PEAK_DBFS, augment_stems, augmented_excerpts
from unetsep.train.compose import BASS_PROGRAMS, HARMONY_PROGRAMS, VOICE_PROGRAMS
from unetsep.train.dataset import open_db
from unetsep.train.kits import SOUNDSETS, SoundSet, find_kits, find_soundsets, sf2_presets
from unetsep.train.render import _new_synth, heldout_tracks

FLUID = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
KIT_XML = """<drumkit_info><name>tiny</name><instrumentList>{}</instrumentList></drumkit_info>"""
INSTRUMENT = """<instrument><id>{i}</id><name>{name}</name><volume>1</volume><gain>1</gain>
<layer><filename>{name}-soft.wav</filename><min>0</min><max>0.5</max><gain>1</gain></layer>
<layer><filename>{name}-hard.wav</filename><min>0.5</min><max>1</max><gain>1</gain></layer>
</instrument>"""


def _tiny_hydrogen_kit(folder):
    """A Hydrogen-format kit: kick, snare, closed and open hat, two velocity layers each."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(int(0.2 * SAMPLE_RATE)) / SAMPLE_RATE
    names = ["Kick", "Snare", "Closed HH", "Open HH"]
    for name in names:
        for layer, amp in (("soft", 0.3), ("hard", 0.8)):
            tone = np.sin(2 * np.pi * 60 * t) if name == "Kick" else rng.standard_normal(len(t))
            sf.write(folder / f"{name}-{layer}.wav", (amp * tone * np.exp(-t * 20)).astype(np.float32),
                     SAMPLE_RATE)
    (folder / "drumkit.xml").write_text(
        KIT_XML.format("".join(INSTRUMENT.format(i=i, name=n) for i, n in enumerate(names))))
    return folder


def _check_sum(root):
    for track in sorted(root.glob("*/*/mixture.wav")):
        mix = sf.read(track, dtype="int16")[0].astype(np.int32)
        stems = sum(sf.read(track.parent / f"{s}.wav", dtype="int16")[0].astype(np.int32)
                    for s in TARGETS)
        assert np.array_equal(mix, stems)
        assert np.abs(sf.read(track.parent / "drums.wav")[0]).max() > 0.01


def test_renders_a_hydrogen_kit_and_an_sf2_kit(tmp_path):
    kit = _tiny_hydrogen_kit(tmp_path / "tiny")
    unetsep("data", "--out", tmp_path / "h", "--songs", 3, "--seconds", 3, "--kits", kit,
            "--soundfonts", FLUID, "--workers", 1)
    tracks = json.loads((tmp_path / "h" / "manifest.json").read_text())["tracks"]
    assert {t["kit"] for t in tracks.values()} == {"hydrogen:tiny"}
    assert {t["soundfont"] for t in tracks.values()} == {"FluidR3_GM"}
    _check_sum(tmp_path / "h")
    proc = unetsep("data", "--out", tmp_path / "s", "--songs", 3, "--seconds", 3, "--kits", FLUID,
                   "--soundfonts", FLUID, "--workers", 1)
    assert "kits the songs use: 1 " in proc.stdout
    _check_sum(tmp_path / "s")


def _sf2_skeleton(path, presets):
    """A SoundFont with preset headers only (no samples): enough for sf2_presets and find_kits."""
    def chunk(cid, data):
        return cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
    phdr = b"".join(struct.pack("<20sHHHIII", name.encode(), prog, bank, 0, 0, 0, 0)
                    for bank, prog, name in [*((b, p, f"p{b}-{p}") for b, p in presets), (0, 0, "EOP")])
    body = b"sfbk" + chunk(b"LIST", b"INFO" + chunk(b"ifil", struct.pack("<HH", 2, 1))) + \
        chunk(b"LIST", b"sdta" + chunk(b"smpl", b"\0" * 92)) + \
        chunk(b"LIST", b"pdta" + chunk(b"phdr", phdr))
    path.write_bytes(chunk(b"RIFF", body))
    return path


def test_a_sound_sets_gm_kits_are_those_its_sf2_defines(tmp_path):
    # Like OPL-3_FM_128M, which has the standard kit only: no kit names that would play preset 0.
    presets = {(0, 0), (0, 33), (128, 0), (128, 25)}
    path = _sf2_skeleton(tmp_path / "two.sf2", sorted(presets))
    assert sf2_presets(str(path)) == presets
    kits = [k.name for k in find_kits([SoundSet("two", str(path))]) if k.name.startswith("two:")]
    assert kits == ["two:standard", "two:tr808"]
    assert sf2_presets(str(tmp_path / "none.sf2")) is None


def test_installed_sound_sets_load_and_define_every_program_the_songs_use():
    sets = find_soundsets()
    assert "FluidR3_GM" in [s.name for s in sets] and set(SOUNDSETS) >= {s.name for s in sets}
    need = {(0, p) for p in (*BASS_PROGRAMS, *HARMONY_PROGRAMS, *VOICE_PROGRAMS)} | {(128, 0)}
    for s in sets:
        have = sf2_presets(s.path) or set()
        assert need <= have, f"{s.name} lacks {sorted(need - have)}"
        fs, sfid = _new_synth(s.path, SAMPLE_RATE)  # FluidSynth loads it (samples on demand)
        fs.delete()
        assert sfid >= 0


def test_missing_kit_package_is_a_one_line_error(tmp_path):
    proc = unetsep("data", "--out", tmp_path / "x", "--songs", 3, "--seconds", 2,
                   "--kits", "hydrogen:NoSuchKit", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "apt-get install hydrogen-drumkits" in proc.stderr


def test_manifest_levels_and_heldout_split(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    tracks = manifest["tracks"]
    assert not set(manifest["kits"]["train"]) & set(manifest["kits"]["heldout"])
    train_kits = {t["kit"] for t in tracks.values() if t["subset"] == "train"}
    assert not train_kits & set(manifest["kits"]["heldout"])
    held = heldout_tracks(dataset)
    test = [n for n, t in tracks.items() if t["subset"] == "test"]
    assert sorted(held[n] for n in test) == [False, True]  # half in-kit, half held out
    assert not any(held[n] for n, t in tracks.items() if t["subset"] == "train")
    # Drums-to-rest as mixed (drawn around +0.5 dB, clipped to -6..+6).
    levels = [t["drums_to_rest_db"] for t in tracks.values()]
    assert -6.5 <= float(np.median(levels)) <= 6.5 and min(levels) >= -7 and max(levels) <= 7


def test_augmentation_gains_each_stem_alone_and_is_deterministic(dataset):
    """augment_stems: each stem comes out as itself times one gain (sign = polarity), channels
    perhaps swapped, never mixed with the other stem; the sum peaks within PEAK_DBFS."""
    rng = np.random.default_rng(0)
    lo, hi = PEAK_DBFS
    for _ in range(8):
        tgt, rest = (rng.standard_normal((1000, 2)).astype(np.float32) for _ in range(2))
        t2, r2 = augment_stems(tgt, rest, rng)
        assert t2.dtype == r2.dtype == np.float32 and t2.shape == (1000, 2)
        assert lo - 0.01 <= 20 * np.log10(np.abs(t2 + r2).max()) <= hi + 0.01
        for got, was in ((t2, tgt), (r2, rest)):
            fits = [np.allclose(got, (got[0, 0] / w[0, 0]) * w, rtol=1e-5, atol=1e-6) for w in (was, was[:, ::-1])]
            assert any(fits)
    tracks = open_db(dataset, "train", "train").tracks
    a = augmented_excerpts(tracks, "drums", 0.5, seed=3)
    b = augmented_excerpts(tracks, "drums", 0.5, seed=3)
    for _ in range(4):
        (mix, t), (mix_b, t_b) = next(a), next(b)
        assert mix.dtype == np.float32 and mix.shape == t.shape and mix.shape[1] == 2
        assert np.array_equal(mix, mix_b) and np.array_equal(t, t_b)  # deterministic from the seed
        assert np.abs(mix).max() <= 10 ** (hi / 20) + 1e-6
    plain = next(augmented_excerpts(tracks, "drums", 0.5, seed=3, augment=False))
    assert plain[0].dtype == np.float32

"""Phone symbols of three alphabets, in any language, read as the English phones the networks know.

The networks read ARPAbet phones (``media.phones.PHONES``: English, as the recogniser hears them). A phoneme file
may write its phones in
- **ARPAbet**: the CMU dictionary and the Montreal Forced Aligner's English ARPA models (``AH0``), Kaldi and Gentle
  in lower case (``ah0``), TIMIT's labels (``ix``, ``dx``, ``pcl``: a closure counts as its stop);
- **espeak-ng's mnemonics**, of every language it speaks (``'a``, ``tS``, French ``A~``, Mandarin ``ts.h``);
- **IPA**, of any language (``æ``, ``t͡ʃ``, ``ʁ``, ``ɑ̃``, ``tʰ``, ``a˥˩``; precomposed or not).

A phone of another language becomes the English phone whose mouth is nearest: what the lips show is whether they
close (/p b m/, and a /p/ that starts an affricate such as German /pf/), how far the mouth opens and whether the
lips round (French /y/ is read as /u/, /ø/ as /o/, /œ/ as /ɔ/; a uvular /ʁ/ as /h/, whose mouth is its vowels').
Stress, length, tone (letters or digits), nasality, aspiration and other diacritics are dropped; a run of vowels
the tables lack (a diphthong, Mandarin ``iou``) is read as its nucleus. Pauses (``sil``, ``sp``, ``spn``, ``pau``,
``_``, ``<eps>``, an empty label) are silence in every alphabet. Anything else is unknown (``None``): a word
(``bonjour``) is not read as its first letter.
"""

from __future__ import annotations

import unicodedata

from .phones import PHONES

SILENT = frozenset({"", "SIL", "SP", "SPN", "PAU", "_", "<EPS>", "<SIL>", "SILENCE", "NSN", "H#", "EPI", "#"})
ARPABET = frozenset(p for p in PHONES if not p.startswith("+")) - {"SIL"}
# other ARPAbet labels (TIMIT's, Kaldi's): the phone each one is
_ARPABET_MORE = {
    "AX": "AH", "AXR": "ER", "AX-H": "AH", "IX": "IH", "UX": "UW", "DX": "T", "NX": "N", "EL": "L", "EM": "M",
    "EN": "N", "ENG": "NG", "HV": "HH", "Q": "T", "PCL": "P", "BCL": "B", "TCL": "T", "DCL": "D", "KCL": "K",
    "GCL": "G",
}

# espeak-ng's mnemonics (stress marks stripped) -> ARPAbet
_ESPEAK_VOWELS = {
    "a": "AE", "A": "AA", "&": "AE", "0": "AA", "V": "AH", "O": "AO", "o": "OW", "U": "UH", "u": "UW", "y": "UW",
    "Y": "OW", "W": "AO", "E": "EH", "e": "EY", "I": "IH", "i": "IY", "@": "AH", "3": "ER", "8": "UH", "1": "IH",
}
_ESPEAK = {
    **_ESPEAK_VOWELS,
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "q": "K", "c": "K", "f": "F", "v": "V", "T": "TH",
    "D": "DH", "s": "S", "z": "Z", "S": "SH", "Z": "ZH", "h": "HH", "x": "K", "X": "HH", "C": "HH", "Q": "G",
    "B": "V", "H": "HH", "m": "M", "n": "N", "N": "NG", "J": "Y", "l": "L", "L": "L", "r": "R", "R": "R", "*": "T",
    "w": "W", "j": "Y", "?": "T",
    "tS": "CH", "dZ": "JH", "ts": "S", "dz": "Z", "pF": "P", "sx": "SH", "t#": "T", "d#": "D", "n-": "N", "m-": "M",
    "l-": "L", "@L": "L", "r-": "R", "n^": "N", "l^": "L", "R^": "ZH", "s.": "SH", "z.": "ZH", "ts.": "CH",
    "s;": "SH", "z;": "ZH", "tS;": "CH", "dz;": "JH", "ts;": "CH", "s\\": "SH", "z\\": "ZH", "t_s\\": "CH",
    "d_z\\": "JH", "p\\": "F", "N\\": "NG", "r`": "R", "**": "R", "r*": "R", "rR": "R", "R3": "R", "M": "F",
    "TS": "CH", "ll": "L", "<h>": "HH",
    "a#": "AE", "aa": "AA", "A:": "AA", "A@": "AA", "O@": "AO", "o@": "AO", "@2": "AH", "@5": "AH", "3:": "ER",
    "VR": "ER", "@r": "ER", "I2": "IH", "I#": "IH", "i@": "IY", "i@3": "IY", "IR": "IY", "e@": "EH", "eI": "EY",
    "aI": "AY", "aI@": "AY", "aI3": "AY", "aU": "AW", "aU@": "AW", "Au": "AW", "OI": "OY", "OY": "OY", "oI": "OY",
    "oU": "OW", "oU#": "OW", "ou": "OW", "ei": "EY", "U@": "UH", "u:": "UW", "u@": "UW", "i.": "IH", "i[": "IH",
    "u-": "UH", "o-": "AH", "e-": "AH", "@-": "AH", "E-": "EH", "u#": "UH", "ong": "UH",
}
_ESPEAK_STRESS = "',%=_!"
_ESPEAK_MODIFIERS = "~:#-[;^`\\.\"245679"  # nasal, length, variants, dental, palatal, retroflex ("0", "1", "3", "8": vowels)

# IPA (marks stripped, see _ipa_base) -> ARPAbet
_IPA_VOWELS = {
    "i": "IY", "y": "UW", "ɨ": "IH", "ʉ": "UW", "ɯ": "UH", "u": "UW", "ɪ": "IH", "ʏ": "UH", "ʊ": "UH", "e": "EY",
    "ø": "OW", "ɘ": "AH", "ɵ": "UH", "ɤ": "AH", "o": "OW", "ə": "AH", "ɛ": "EH", "œ": "AO", "ɜ": "ER", "ɞ": "ER",
    "ʌ": "AH", "ɔ": "AO", "æ": "AE", "ɐ": "AH", "a": "AA", "ɶ": "AO", "ɑ": "AA", "ɒ": "AA", "ɚ": "ER", "ɝ": "ER",
    "ᵻ": "IH",
}
_IPA = {
    **_IPA_VOWELS,
    "p": "P", "b": "B", "t": "T", "d": "D", "ʈ": "T", "ɖ": "D", "c": "K", "ɟ": "G", "k": "K", "g": "G", "ɡ": "G",
    "q": "K", "ɢ": "G", "ʔ": "T", "ʡ": "T", "ɓ": "B", "ɗ": "D", "ʄ": "G", "ɠ": "G", "ʛ": "G", "ʘ": "P",
    "m": "M", "ɱ": "F", "n": "N", "ɳ": "N", "ɲ": "N", "ŋ": "NG", "ɴ": "NG",
    "ʙ": "B", "r": "R", "ʀ": "HH", "ⱱ": "V", "ɾ": "T", "ɽ": "R", "ɺ": "L",
    "ɸ": "F", "β": "V", "f": "F", "v": "V", "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH",
    "ʂ": "SH", "ʐ": "ZH", "ɕ": "SH", "ʑ": "ZH", "ç": "HH", "ʝ": "Y", "x": "HH", "ɣ": "G", "χ": "HH", "ʁ": "HH",
    "ħ": "HH", "ʕ": "HH", "h": "HH", "ɦ": "HH", "ɧ": "SH",
    "ʋ": "V", "ɹ": "R", "ɻ": "R", "j": "Y", "ɰ": "W", "w": "W", "ʍ": "W", "ɥ": "W",
    "l": "L", "ɫ": "L", "ɭ": "L", "ʎ": "L", "ʟ": "L", "ɬ": "L", "ɮ": "L",
    "ts": "S", "dz": "Z", "tʃ": "CH", "dʒ": "JH", "tɕ": "CH", "dʑ": "JH", "ʈʂ": "CH", "ɖʐ": "JH", "pf": "P",
    "tθ": "TH", "dð": "DH", "tɬ": "L", "kx": "K",
    "aɪ": "AY", "aʊ": "AW", "eɪ": "EY", "oʊ": "OW", "əʊ": "OW", "ɔɪ": "OY", "ai": "AY", "au": "AW", "ei": "EY",
    "ou": "OW", "oi": "OY", "ɑɪ": "AY", "ɑʊ": "AW", "ɛɪ": "EY", "ɔʏ": "OY",
    # the Montreal Forced Aligner's IPA models write a diphthong's glide as a consonant
    "ej": "EY", "aj": "AY", "aw": "AW", "ow": "OW", "ɔj": "OY", "oj": "OY", "əw": "OW",
}
_NON_SYLLABIC = "\u032f"  # a vowel that is a glide in its diphthong (Mandarin "i̯a")


def arpabet(symbol: str) -> str | None:
    """An ARPAbet label (upper case, or all lower case as Kaldi and Gentle write it; stress digits allowed)."""
    bare = symbol.strip().rstrip("012")
    if bare.upper() in SILENT:
        return "SIL"
    if bare != bare.upper() and bare != bare.lower():  # mixed case: espeak-ng's, not ARPAbet
        return None
    bare = bare.upper()
    return bare if bare in ARPABET else _ARPABET_MORE.get(bare)


def espeak(symbol: str) -> str | None:
    """An espeak-ng phoneme mnemonic, of any of its languages."""
    s = symbol.strip()
    if s.upper() in SILENT or s.startswith("_") or (s.startswith("(") and s.endswith(")")):
        return "SIL"  # pauses, and the language switches espeak-ng reports as phonemes ("(en)")
    s = s.lstrip(_ESPEAK_STRESS)
    if not any(c.isalnum() or c in "@&?*<" for c in s):  # stress or syllable marks alone
        return "SIL"
    if s in _ESPEAK:
        return _ESPEAK[s]
    if len(s) > 1 and s.endswith("h") and s[:-1] in _ESPEAK:  # aspirated: Mandarin "th", "ts.h"
        return _ESPEAK[s[:-1]]
    while len(s) > 1 and s[-1] in _ESPEAK_MODIFIERS:  # "A~", "u-:", "R2": the mnemonic it modifies
        s = s[:-1]
        if s in _ESPEAK:
            return _ESPEAK[s]
    if len(s) > 1 and s.startswith("?"):  # a glottal onset (Danish stød): the vowel
        return espeak(s[1:])
    vowels = [c for c in s if c not in _ESPEAK_MODIFIERS]
    return _nucleus(vowels, _ESPEAK_VOWELS, glides="iuy")


def _ipa_base(symbol: str) -> str:
    """An IPA symbol without stress, length, tone, diacritics (nasal, aspirated, syllabic, tie bars), digits and
    punctuation; decomposed, so a precomposed ``õ`` is ``o`` (``ç`` stays itself)."""
    s = unicodedata.normalize("NFD", symbol.strip()).replace("c\u0327", "ç")
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if cat in ("Mn", "Lm", "Sk", "Nd", "Po", "Pd", "Zs") and ch != "ç":
            continue
        out.append(ch)
    return "".join(out)


def ipa(symbol: str) -> str | None:
    """An IPA symbol, of any language."""
    if symbol.strip().upper() in SILENT:
        return "SIL"
    base = _ipa_base(symbol)
    if not base:
        return "SIL"  # marks alone (a stress or length mark, a syllable break)
    if base in _IPA:
        return _IPA[base]
    # a run of vowels the table lacks: the nucleus, skipping a vowel marked non-syllabic
    decomposed = unicodedata.normalize("NFD", symbol.strip())
    glides = {decomposed[k - 1] for k in range(1, len(decomposed)) if decomposed[k] == _NON_SYLLABIC}
    if len(base) > 1 and base[-1] in "jwɥ":  # a vowel with its off-glide written as a consonant ("ɛj")
        base = base[:-1]
        if base in _IPA_VOWELS:
            return _IPA_VOWELS[base]
    return _nucleus(list(base), _IPA_VOWELS, skip=glides)


def _nucleus(units: list, vowels: dict, glides: str = "", skip=frozenset()) -> str | None:
    """The phone of a run of 2-4 vowels: its first vowel, past a leading glide (one of ``glides`` followed by a
    vowel, or one of ``skip``); None where anything in the run is not a vowel (a word, say)."""
    if not 2 <= len(units) <= 4 or not all(u in vowels for u in units):
        return None
    k = 0
    while k < len(units) - 1 and (units[k] in glides or units[k] in skip):
        k += 1
    return vowels[units[k]]


READERS = {"arpabet": arpabet, "espeak": espeak, "ipa": ipa}


def looks_like_words(symbols) -> bool:
    """Whether most of ``symbols`` are words (three or more letters, not a phone of any alphabet): a word tier given
    for a phone tier."""
    symbols = [s for s in symbols if s.strip().upper() not in SILENT]
    wordy = [s for s in symbols if len(s) >= 3 and s.isalpha() and not any(read(s) for read in READERS.values())]
    return bool(symbols) and len(wordy) * 2 >= len(symbols)

"""The COCO caption toolkit's tokenisation, without Java.

pycocoevalcap runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` on all captions of a call
joined with newlines, then drops punctuation tokens (shared/reference/cocoeval.md section 2). This module
re-implements that pipeline in Python: a longest-match lexer over the lexer rules of PTBLexer 3.4.1 (a JFlex
scanner: the longest match wins, trailing context counts towards the length, the earlier rule wins a tie;
``%caseless`` makes string literals case-insensitive but leaves character classes case-sensitive), the
lexer's normalisations with the options the toolkit gets (brackets -> -LRB- etc., LaTeX quotes, ``--``,
``...``, currency, fractions, U+00A0 inside multi-word tokens, split assimilations), Java's per-token
lower-casing, and the wrapper's line pairing and punctuation filter.

Java sees UTF-16: characters outside the BMP (most emoji) are two untokenizable surrogates and are deleted; the
character classes here are therefore restricted to the BMP.

The public entry point is :func:`tokenize_batch` (one toolkit call); :func:`tokenize` wraps it for dicts shaped
like the toolkit's ``PTBTokenizer.tokenize`` input.

Verification: tests/test_ptb_tokenizer.py compares the output with the real jar (through pycocoevalcap's own
wrapper) on ~21,000 generated captions in the default run and ~240,000 more in the slow suite. Known limits:
Python's ``re`` returns the first match of an alternation where JFlex takes the longest; the rules where this
was seen to matter are ordered or searched for their longest match explicitly, others could remain. Java 17
lower-cases with Unicode 13 and Python 3.11 with Unicode 14 (characters whose case mapping changed between
the two would differ).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Callable, Hashable, Mapping, Sequence

__all__ = ["tokenize_batch", "tokenize", "PUNCTUATIONS"]

#: Tokens the toolkit's wrapper removes after tokenisation (compared after lower-casing, so "-LRB-" never matches).
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"])

# ---------------------------------------------------------------------------------------------------------
# character classes (BMP only, see the module docstring)


def _ranges(flags: list[bool]) -> str:
    """A regex character-class body with every BMP code point whose flag is set."""
    out, start = [], None
    for cp in range(0x10001):
        ok = cp < 0x10000 and flags[cp]
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append((start, cp - 1))
            start = None
    esc = "\\u%04x".__mod__
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in out)


# CoreNLP 3.4.1's scanner tables were generated with Java 8's Unicode 6.2: BMP letters and digits assigned
# since then are untokenizable there (deleted), and two Mongolian letters were letters then (now Mn).
# Python's unicodedata is newer; these ranges are the differences, checked against the jar's character map.
_NOT_YET_ASSIGNED = [
    (0x037F, 0x037F), (0x0528, 0x052F), (0x0560, 0x0560), (0x0588, 0x0588), (0x05EF, 0x05EF), (0x0860, 0x086A),
    (0x0870, 0x0887), (0x0889, 0x088E), (0x08A1, 0x08A1), (0x08AD, 0x08C9), (0x0978, 0x0978), (0x0980, 0x0980),
    (0x09FC, 0x09FC), (0x0AF9, 0x0AF9), (0x0C34, 0x0C34), (0x0C5A, 0x0C5A), (0x0C5D, 0x0C5D), (0x0C80, 0x0C80),
    (0x0CDD, 0x0CDD), (0x0D04, 0x0D04), (0x0D54, 0x0D56), (0x0D5F, 0x0D5F), (0x0DE6, 0x0DEF), (0x0E86, 0x0E86),
    (0x0E89, 0x0E89), (0x0E8C, 0x0E8C), (0x0E8E, 0x0E93), (0x0E98, 0x0E98), (0x0EA0, 0x0EA0), (0x0EA8, 0x0EA9),
    (0x0EAC, 0x0EAC), (0x13F5, 0x13F5), (0x13F8, 0x13FD), (0x16F1, 0x16F8), (0x170D, 0x170D), (0x171F, 0x171F),
    (0x1878, 0x1878), (0x191D, 0x191E), (0x19B0, 0x19C0), (0x19C8, 0x19C9), (0x1B4C, 0x1B4C), (0x1C80, 0x1C88),
    (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x1CF2, 0x1CF3), (0x1CFA, 0x1CFA), (0x2C2F, 0x2C2F), (0x2C5F, 0x2C5F),
    (0x312E, 0x312F), (0x31BB, 0x31BF), (0x4DB6, 0x4DBF), (0x9FCD, 0x9FFF), (0xA698, 0xA69D), (0xA78F, 0xA78F),
    (0xA794, 0xA79F), (0xA7AB, 0xA7CA), (0xA7D0, 0xA7D1), (0xA7D3, 0xA7D3), (0xA7D5, 0xA7D9), (0xA7F2, 0xA7F7),
    (0xA8FD, 0xA8FE), (0xA9E0, 0xA9E4), (0xA9E6, 0xA9EF), (0xA9F0, 0xA9F9), (0xA9FA, 0xA9FE), (0xAA7E, 0xAA7F),
    (0xAB30, 0xAB5A), (0xAB5C, 0xAB69), (0xAB70, 0xABBF),
]


def _java_classes() -> tuple[str, str, str]:
    """[:letter:], [:digit:] and [:uppercase:] of the lexer (Character.isLetter/isDigit/isUpperCase, Unicode 6.2)."""
    cats = [unicodedata.category(chr(cp)) if not 0xD800 <= cp <= 0xDFFF else "Cs" for cp in range(0x10000)]
    for lo, hi in _NOT_YET_ASSIGNED:
        for cp in range(lo, hi + 1):
            cats[cp] = "Cn"
    cats[0x1885] = cats[0x1886] = "Lo"
    return (
        _ranges([c[0] == "L" for c in cats]),
        _ranges([c == "Nd" for c in cats]),
        _ranges([c == "Lu" for c in cats]),
    )


_L, _D, _UP = _java_classes()

# LETTER adds soft hyphen, combining marks and a few other ranges to [:letter:]
_LETTER_EXTRA = (
    "\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385\u03CF\u03F6"
    "\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4"
    "\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F"
    "\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963"
    "\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F"
    "\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44"
    "\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD"
)

_LETTER_FIRST = _L + _LETTER_EXTRA + "&"  # the characters a LETTER can start with

# ---------------------------------------------------------------------------------------------------------
# the lexer's macros, as Python regex fragments. (?i:...) marks the caseless string literals.

SPLET = r"&[aeiouAEIOU](?i:acute|grave|uml);"
LETTER = rf"(?:[{_L}{_LETTER_EXTRA}]|{SPLET})"
PLAINL = f"[{_L}]"
DIGIT = f"[{_D}]"
SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
NEWLINE = r"(?:\r\n|\r|\n|\u2028|\u2029|\u000B|\u000C|\u0085)"
SPACENL = rf"(?:{SPACE}|{NEWLINE})"
SGML = (
    r"<(?:[!?][A-Za-z\-][^>\r\n]*"
    r"|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*/?"
    r"|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"
)
SENTEND = rf"{SPACENL}(?:{SPACENL}|[{_UP}]|{SGML})"
NUM = rf"(?:{DIGIT}*(?:[.:,\u00AD\u066B\u066C]{DIGIT}+)+|{DIGIT}+)"
WORD = rf"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*"
APOS = r"(?:['\u0092\u2019]|&(?i:apos);)"
APOSETC = rf"(?:{APOS}|[`\u0091\u2018\u201B])"
LD = f"[{_L}{_D}]"
THING = rf"(?:[dDoOlL]{APOSETC}{LD})?{LD}+(?:[-_\u058A\u2010\u2011](?:[dDoOlL]{APOSETC}{LD})?{LD}+)*"
SPAMP = r"&(?i:amp);"
THINGA = rf"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+"
ACRO_MAIN = r"[A-Za-z](?:\.[A-Za-z])*"
ACRO_SPECIAL = r"(?i:(?:canada|sino|korean|eu|japan|non)-u\.s|u\.s\.-(?:u\.k|u\.s\.s\.r))"
ACRO = rf"(?:{ACRO_MAIN}|{ACRO_SPECIAL})"
ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{ACRO_SPECIAL})"
# (the acronym alternative first: when both match it is the longer one, and JFlex takes the longest)
HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{ACRO2}\.|[A-Za-z0-9\u00AD]+))+"
REDAUX = rf"{APOS}(?:[msdMSD]|(?i:re|ve|ll))"
SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
SREDAUX = rf"(?i:n){APOSETC}(?i:t)"
ABMONTH = r"(?i:jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)"
ABDAYS = r"(?i:mon|tues|tue|wed|thurs|thu|fri)"
ABSTATE = (
    r"(?:(?i:ala|ariz)|A(?i:z)|A(?i:rk)|(?i:calif|colo|conn|ct|dak)|D(?i:el)|(?i:fla|ga)|I(?i:ll)|(?i:ind|kans?|ky)"
    r"|L(?i:a)|M(?i:ass)|(?i:md|mich|minn)|M(?i:iss)|(?i:mo|mont|neb|nev|okla)|O(?i:re)|P(?i:a)|(?i:penn|tenn)"
    r"|T(?i:ex)|(?i:va|vt)|W(?i:ash)|(?i:wisc?|wyo))"
)
ABCOMP = r"(?:(?i:inc|cos?|corp)|(?i:pp?t)[ye](?i:s?)|(?i:ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys))"
ABNUM = r"(?i:tel|est|ext|sq)"
ABPTIT = r"(?i:jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq)"
ABBREV1 = rf"(?:{ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|(?i:etc|al|seq|bldg))\."
ABTITLE = (
    r"(?:(?i:mr|mrs|ms)|M(?i:iss)|(?i:drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl"
    r"|pvt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme"
    r"|msgr|sfc))"
)
ABCOMP2 = r"(?:(?i:invt|elec|natl)|(?i:m)[ft](?i:g)|(?i:dept))"
# (ACRO first: "a.k.a.U.S." must be one acronym, and JFlex takes the longest alternative)
ABBREV4 = rf"(?:{ACRO}|{ABTITLE}|(?i:vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph)|{ABCOMP2})"
ABBREV3 = r"(?i:ca|figs?|prop|nos?|art|bldg|pp|op)\."
INSENTP = r"[,;:\u3001]"
MISCSYMBOL = (
    "[+%&~^|\\\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6"
    "\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965"
    "\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F"
    "\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]"
)
_ACRONYM_NEXT = (
    "A(?i:bout)|A(?i:ccording)|A(?i:dditionally)|A(?i:fter)|A(?i:n)|A|A(?i:s)|A(?i:t)|B(?i:ut)|E(?i:arlier)|H(?i:e)"
    "|H(?i:er)|H(?i:ere)|H(?i:owever)|I(?i:f)|I(?i:n)|I(?i:t)|L(?i:ast)|M(?i:any)|M(?i:ore)|M(?i:r\\.)|M(?i:s\\.)"
    "|N(?i:ow)|O(?i:nce)|O(?i:ne)|O(?i:ther)|O(?i:ur)|S(?i:he)|S(?i:ince)|S(?i:o)|S(?i:ome)|S(?i:uch)|T(?i:hat)"
    "|T(?i:he)|T(?i:heir)|T(?i:hen)|T(?i:here)|T(?i:hese)|T(?i:hey)|T(?i:his)|W(?i:e)|W(?i:hen)|W(?i:hile)"
    "|W(?i:hat)|Y(?i:et)|Y(?i:ou)"
)

# ---------------------------------------------------------------------------------------------------------
# token actions: what a matched rule emits (mirroring the lexer's actions with the toolkit's options)

_LEFT_SQ = re.compile("[\u0091\u2018\u201B\u2039]")
_RIGHT_SQ = re.compile("[\u0092\u2019\u203A]")
_LEFT_DQ = re.compile("[\u0093\u201C\u00AB]")
_RIGHT_DQ = re.compile("[\u0094\u201D\u00BB]")
_SINGLE = re.compile("&apos;|'")
_DOUBLE = re.compile('"|&quot;')
_AMP = re.compile("(?i:&amp;)")


def _latex_quotes(tok: str, left: bool) -> str:
    tok = _SINGLE.sub("`" if left else "'", tok)
    tok = _DOUBLE.sub("``" if left else "''", tok)
    tok = _LEFT_SQ.sub("`", tok)
    tok = _RIGHT_SQ.sub("'", tok)
    tok = _LEFT_DQ.sub("``", tok)
    return _RIGHT_DQ.sub("''", tok)


def _soft(tok: str) -> str:
    if "\u00AD" not in tok:
        return tok
    tok = tok.replace("\u00AD", "")
    return tok or "-"


def _parens(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$", "\u20AC": "$"}
_BRACKETS = {"{": "-LCB-", "}": "-RCB-", "[": "-LSB-", "]": "-RSB-", "(": "-LRB-", ")": "-RRB-"}

# An action maps the rule's text to (emitted token or None, characters consumed). The consumed count is below
# len(text) where the lexer pushes characters back (assimilations, sentence-final abbreviations).
Action = Callable[[str], "tuple[str | None, int]"]


def _keep(t: str):
    return t, len(t)


def _act_soft(t: str):
    return _soft(t), len(t)


def _push(n: int) -> Action:
    return lambda t: (t[:-n], len(t) - n)


def _nbsp(t: str):
    return t.replace(" ", "\u00A0"), len(t)


def _const(s: str) -> Action:
    return lambda t: (s, len(t))


def _quotes(left: bool) -> Action:
    return lambda t: (_latex_quotes(t, left), len(t))


def _acronym_sentence_end(t: str):
    # "I." before "The": the letter, then the period again; "U.S." before "The": "U.S.", then the period again
    if len(t) == 2:
        return t[0], 1
    return t, len(t) - 1


def _abbrev_then_period(t: str):
    return t, len(t) - 1


def _phone(t: str):
    return _parens(t.replace(" ", "\u00A0")), len(t)


def _hyphens(t: str):
    return ("--" if 3 <= len(t) <= 4 else t), len(t)


def _skip(t: str):
    return None, len(t)


# What the tokens of some rules cannot contain (see _Rule.longest)
_URL_STOP = re.compile(r"[ \t\n\f\r\"<>|]")
_WORD_STOP = re.compile(r"[ \t\n\f\r\u00A0]")
_SGML_STOP = re.compile(r"[\r\n]")

# (main regex, trailing context regex or None, action, first-character class or None for "any"[, stop]).
# The order is the rule order of PTBLexer.flex 3.4.1; a rule whose regex is an alternation of different
# lengths is given as several entries with the same action (JFlex takes the longest, Python's re the first).
_RULES: list[tuple] = [
    (r"(?i:c)\+\+", None, _keep, "cC"),
    (r"(?i:c|f)#", None, _keep, "cCfF"),
    (r"(?i:cannot)", None, _push(3), "cC"),
    (r"'(?i:twas)", None, _push(3), "'"),
    (r"'(?i:tis)", None, _push(2), "'"),
    (r"(?i:gonna|gotta|lemme|gimme|wanna)", None, _push(2), "gGlLwW"),
    (SGML, None, _nbsp, "<", _SGML_STOP),
    (r"&(?i:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", None, _const("--"), "&\u0096\u0097\u2013\u2014\u2015"),
    (SPAMP, None, _const("&"), "&"),
    (r"&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);", None, _keep, "&"),
    (WORD, REDAUX, _act_soft, _LETTER_FIRST),
    (SWORD, SREDAUX, _act_soft, "A-Za-z\u00AD"),
    (WORD, None, _act_soft, _LETTER_FIRST),
    # APOWORD, one entry per alternative
    (rf"{APOS}(?i:n){APOS}?", None, _keep, "'\u0092\u2019&"),
    (rf"[lLdDjJ]{APOS}", None, _keep, "lLdDjJ"),
    (rf"(?i:dunkin|somethin|ol){APOS}", None, _keep, "dDsSoO"),
    (rf"{APOS}(?i:em)", None, _keep, "'\u0092\u2019&"),
    (rf"[A-HJ-XZn]{APOSETC}{PLAINL}{{2}}{PLAINL}*", None, _keep, "A-HJ-XZn"),
    (rf"{APOS}[2-9]0(?i:s)", None, _keep, "'\u0092\u2019&"),
    (rf"{APOS}(?i:till?)", None, _keep, "'\u0092\u2019&"),
    (rf"{PLAINL}{PLAINL}*[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{PLAINL}*", None, _keep, _L),
    (rf"{APOS}(?i:cause)", None, _keep, "'\u0092\u2019&"),
    (r"(?i:cont'd\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)", None, _keep, "cC'nNeEsSlL"),
    (rf"(?i:o){APOSETC}(?i:o)", None, _keep, "oO"),
    (rf"(?i:y){APOS}", rf"{PLAINL}", _keep, "yY"),
    (r"(?i:https?)://[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]", None, _keep, "hH", _URL_STOP),
    (
        r"(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?",
        None, _keep, "wW", _URL_STOP,
    ),
    (
        r"(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?i:com|net|org|edu))(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?",
        None, _keep, r"^ \t\n\f\r\"`'<>|.!?(){},-_$", _URL_STOP,
    ),
    (
        r"(?:&(?i:lt);|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"
        r"[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:&(?i:gt);|>)?",
        None, _keep, "&<a-zA-Z0-9", _URL_STOP,
    ),
    (r"@[a-zA-Z_][a-zA-Z_0-9]*", None, _keep, "@"),
    (rf"#{LETTER}+", None, _keep, "#"),
    (REDAUX, r"[^A-Za-z]", _quotes(False), "'\u0092\u2019&"),
    (SREDAUX, r"[^A-Za-z]", _quotes(False), "nN"),
    (rf"{DIGIT}{{1,2}}[\-/]{DIGIT}{{1,2}}[\-/]{DIGIT}{{2,4}}", None, _keep, _D),
    (rf"[\-+]?{NUM}", None, _act_soft, f"{_D}\\-+.:,\u00AD\u066B\u066C"),
    (r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)", None, _keep,
     "\u207A\u207B\u208A\u208B\u2070\u00B9\u00B2\u00B3\u2074-\u2079\u2080-\u2089"),
    (rf"(?:{DIGIT}{{1,4}}[- \u00A0])?{DIGIT}{{1,4}}(?:\\?/|\u2044){DIGIT}{{1,4}}", None, _nbsp, _D),
    (r"[\u00BC\u00BD\u00BE\u2153-\u215E]", None, lambda t: (_FRACTIONS.get(t, t), 1), "\u00BC\u00BD\u00BE\u2153-\u215E"),
    # TBSPEC
    (r"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s|pro-|anti-)", None, lambda t: (_AMP.sub("&", t), len(t)), "-cCpPaA"),
    (r"(?i:s)(?:&|&(?i:amp);)(?i:p-500|ls)", None, lambda t: (_AMP.sub("&", t), len(t)), "sS"),
    (rf"(?i:cap){APOS}(?i:n)|(?i:c){APOS}(?i:est)", None, _keep, "cC"),
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", None, _keep, "A-Za-z0-9"),
    (r"[A-Z]*\$|#", None, _keep, "A-Z$#"),
    (r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]", None,
     lambda t: (_CURRENCY.get(t, t), 1), "\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6"),
    (rf"{ACRO_MAIN}\.", rf"{SPACENL}+(?:{_ACRONYM_NEXT}|{SGML}){SPACENL}", _acronym_sentence_end, "A-Za-z"),
    (rf"{ACRO_SPECIAL}\.", rf"{SPACENL}+(?:{_ACRONYM_NEXT}|{SGML}){SPACENL}", _acronym_sentence_end, "cCsSkKeEjJnNuU"),
    (ABBREV3, rf"{SPACENL}?{DIGIT}", _keep, "cCfFpPnNaAbBoO"),
    (r"(?:(?i:pt)[eyEY]|(?i:co))\.", rf"{SPACE}(?i:ltd|lim)", _keep, "pPcC"),
    (ABBREV1, SENTEND, _abbrev_then_period, "A-Za-z"),
    (ABBREV1, r"[\s\S][\s\S]", _keep, "A-Za-z"),
    (ABBREV1, None, _abbrev_then_period, "A-Za-z"),
    (rf"{ABBREV4}\.", None, _keep, "A-Za-z", _WORD_STOP),
    (ABBREV4, SPACE, _keep, "A-Za-z"),
    (ACRO_MAIN, SPACENL, _keep, "A-Za-z"),
    (ACRO_SPECIAL, SPACENL, _keep, "cCsSkKeEjJnNuU"),
    (rf"{APOS}[0-9][0-9]", SPACENL, _keep, "'\u0092\u2019&"),
    (
        rf"(?:{LETTER}|{DIGIT})+(?:\.(?:{LETTER}|{DIGIT})+)*\.(?i:bat|bmp|class|cgi|cpp|c|dll|docx|doc|exe|gif|gz|h|html|htm"
        r"|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|xml|x|zip)",
        rf"{SPACENL}|[.?!,]", _keep, _LETTER_FIRST + _D,
    ),
    (rf"{WORD}\.", INSENTP, _act_soft, _LETTER_FIRST),
    (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}",
     None, _phone, "(+0-9"),
    (r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}", None, _phone, "+0-9"),
    (r'"|&(?i:quot);', r"[A-Za-z0-9$]", _quotes(True), '"&'),
    (r'"|&(?i:quot);', None, _quotes(False), '"&'),
    ("\x7f", None, _skip, "\x7f"),
    (r"<|&(?i:lt);", None, _const("<"), "<&"),
    (r">|&(?i:gt);", None, _const(">"), ">&"),
    (r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]", r"[^A-Za-z0-9]", lambda t: (_parens(t), len(t)), "<>:;="),
    (r"[\^x=~<>]\.\[\^(?i:x)=~<>\]", None, lambda t: (_parens(t), len(t)), "^x=~<>"),
    (r"[\-\^x=~<>']_[\-\^x=~<>']", None, lambda t: (_parens(t), len(t)), "-^x=~<>'"),
    (r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)", None, lambda t: (_parens(t), len(t)), "("),
    (r"\([\^x=~<>']-[\^x=~<>'`]\)", None, lambda t: (_parens(t), len(t)), "("),
    (r"[{}\[\]()]", None, lambda t: (_BRACKETS[t], 1), "{}\\[\\]()"),
    (r"-+", None, _hyphens, "-"),
    (r"\.{3,5}|[\u0085\u2026]", None, _const("..."), ".\u0085\u2026"),
    (r"(?:\.[ \u00A0]){2,4}\.", None, _const("..."), "."),
    (r"@+|#+|_+", None, _keep, "@#_"),
    (r"\*+|(?:\\\*){1,3}", None, _keep, "*\\\\"),
    (INSENTP, None, _keep, ",;:\u3001"),
    (r"[?!]+", None, _keep, "?!"),
    ("[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", None, _keep,
     ".\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002"),
    (r"=", None, _keep, "="),
    (r"/", None, _keep, "/"),
    (rf"{HTHING}\.", INSENTP, _act_soft, "A-Za-z0-9"),
    (HTHING, None, _act_soft, "A-Za-z0-9", _WORD_STOP),
    (rf"{THING}\.", INSENTP, _keep, _L + _D),
    (THING, None, _keep, _L + _D, _WORD_STOP),
    (rf"{THINGA}\.", INSENTP, lambda t: (_AMP.sub("&", t), len(t)), "A-Z"),
    (THINGA, None, lambda t: (_AMP.sub("&", t), len(t)), "A-Z"),
    (r"'", r"[A-Za-z][^ \t\n\r\u00A0]", _quotes(True), "'"),
    (REDAUX, None, _quotes(False), "'\u0092\u2019&"),
    (SREDAUX, None, _quotes(False), "nN"),
    # QUOTES = APOS | '' | [quote chars]{1,2}
    (r"''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}", None,
     _quotes(False), "'`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB"),
    (APOS, None, _quotes(False), "'\u0092\u2019&"),
    (r"<<|>>", None, _keep, "<>"),
    (MISCSYMBOL, None, _keep, MISCSYMBOL[1:-1]),
    (rf"\x00|{SPACE}+|[\u200B\u200E\u200F\uFEFF]", None, _skip, " \t\u00A0\u2000-\u200A\u3000\x00\u200B\u200E\u200F\uFEFF"),
    (NEWLINE, None, lambda t: ("\n", len(t)), "\r\n\u2028\u2029\u000B\u000C\u0085"),
    (r"&(?i:nbsp);", None, _skip, "&"),
    (r"[^\n]", None, _skip, None),  # untokenizable: deleted
]


class _Rule:
    __slots__ = ("rx", "has_ctx", "action", "first", "longest")

    def __init__(self, main: str, ctx: str | None, action: Action, first: str | None, longest: re.Pattern | None = None):
        pattern = f"(?:{main})" if ctx is None else f"(?:{main})(?=({ctx}))"
        self.rx = re.compile(pattern)
        self.has_ctx = ctx is not None
        self.action = action
        self.first = re.compile(f"[{first}]") if first is not None else None
        # Python's backtracking returns the first match, JFlex the longest. For rules whose alternations can
        # make these differ (a URL domain segment swallowing "/path", "a.k.a" vs the acronym "a.k.a.U.S"),
        # longer ends are tried explicitly, up to the first character the token cannot contain (`longest`).
        self.longest = longest


@lru_cache(maxsize=1)
def _compiled() -> tuple[_Rule, ...]:
    """The compiled rules (compiled on first use: it takes a few tenths of a second)."""
    return tuple(_Rule(*r) for r in _RULES)


@lru_cache(maxsize=None)
def _candidates(c: str) -> tuple[_Rule, ...]:
    """The rules that can start with character c (each rule's first-character class is a superset)."""
    return tuple(r for r in _compiled() if r.first is None or r.first.match(c))


# A run of ASCII letters followed by a space, a newline or the end is always one WORD whatever the context,
# unless it is an assimilation ("cannot", "gonna", ...): the common case is taken without trying every rule.
# The same holds before "," or "." that end a word (", " / ". " / "." at the end), unless the letters with the
# period form an abbreviation or acronym (then the abbreviation rules decide).
_FAST = re.compile(r"[A-Za-z]+(?=[ \n]|\Z|[.,](?:[ \n]|\Z))")
_ABBREV_LIKE = re.compile(rf"(?:{ABBREV1}|{ABBREV4}\.|{ABBREV3}|(?:(?i:pt)[eyEY]|(?i:co))\.)")
# (not when a tab, U+00A0, ... follows the last space: the SPACES rule would take it with that space)
_FAST_RUN = re.compile(r"(?:[A-Za-z]+ )+(?![\t\u00A0\u2000-\u200A\u3000])").match
_SPACES = re.compile(f"{SPACE}+").match
_ASSIMILATIONS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])


def _java_lower(tok: str) -> str:
    """Java's toLowerCase for a token holding a capital sigma.

    Java writes the final form only when no cased letter follows anywhere in the word, where words come from
    its BreakIterator: runs of letters and digits, joined across a dash, "_", ".", "'" or '"' only between two
    letters; ideographs are words of their own. Python only looks at the next character: "ΣΑΣ-LRB" is
    "σασ-lrb" and "ΣΑΣ3E.G" is "σασ3e.g" in Java, while "ΣΑΣ555-1234RED" and "ΣΑΣ’X" end in "ς".
    """

    def alnum(c: str) -> bool:
        if "\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff":
            return False
        return c.isalnum() or unicodedata.category(c) in ("Mn", "Mc", "Me")

    def joins(j: int) -> bool:  # tok[j] is a mid-word character between two letters
        c = tok[j]
        mid = c in ".'\"\u00ad\u2027" or unicodedata.category(c) in ("Pd", "Pc")
        return mid and 0 < j < len(tok) - 1 and tok[j - 1].isalpha() and tok[j + 1].isalpha()

    def cased(c: str) -> bool:
        return c.lower() != c.upper()

    out = []
    for i, ch in enumerate(tok):
        if ch != "\u03a3":
            out.append(ch.lower())
            continue
        start = i
        while start > 0 and (alnum(tok[start - 1]) or joins(start - 1)):
            start -= 1
        end = i + 1
        while end < len(tok) and (alnum(tok[end]) or joins(end)):
            end += 1
        before = any(cased(c) for c in tok[start:i])
        after = any(cased(c) for c in tok[i + 1 : end])
        out.append("\u03c2" if before and not after else "\u03c3")
    return "".join(out)


def _lex_lines(text: str) -> list[list[str]]:
    """PTBLexer 3.4.1 with tokenizeNLs on `text`: the lower-cased tokens of each output line."""
    lines: list[list[str]] = [[]]
    cur = lines[0]
    pos, n = 0, len(text)
    fast = _FAST.match
    run = _FAST_RUN
    while pos < n:
        m = run(text, pos)
        if m is not None:  # several plain words, each followed by one space: one WORD each
            words = m.group().lower().split(" ")
            words.pop()  # the empty field after the last space
            if _ASSIMILATIONS.isdisjoint(words):
                cur.extend(words)
                pos = m.end()
                continue
        m = fast(text, pos)
        if m is not None:
            end = m.end()
            word = m.group().lower()
            if word not in _ASSIMILATIONS and (
                end == n or text[end] != "." or not _ABBREV_LIKE.fullmatch(text, pos, end + 1)
            ):
                cur.append(word)
                pos = end
                continue
        c = text[pos]
        if c == " ":  # only the SPACES rule starts with " "; it also eats following U+00A0, tabs, ...
            pos = _SPACES(text, pos).end()
            continue
        if c == "\n":  # only NEWLINE starts with "\n"
            cur = []
            lines.append(cur)
            pos += 1
            continue
        if c == "." and (pos + 1 == n or text[pos + 1] == "\n"):  # a lone period before the line end
            cur.append(".")
            pos += 1
            continue
        best, best_len, best_text = None, 0, ""
        for rule in _candidates(c):
            m = rule.rx.match(text, pos)
            if m is None:
                continue
            total = (m.end(1) if rule.has_ctx else m.end()) - pos
            if rule.longest is not None:
                stop = rule.longest.search(text, m.end())
                for end in range(stop.start() if stop else n, m.end(), -1):
                    if rule.rx.fullmatch(text, pos, end):
                        m = rule.rx.fullmatch(text, pos, end)
                        total = end - pos
                        break
            if total > best_len:
                best, best_len = rule, total
                best_text = m.group()
        if best is None:  # cannot happen: the last rule matches any character but "\n", NEWLINE matches "\n"
            pos += 1
            continue
        tok, used = best.action(best_text)
        pos += used
        if tok is None:
            continue
        if tok == "\n":
            cur = []
            lines.append(cur)
        else:
            cur.append(tok.lower() if "\u03a3" not in tok else _java_lower(tok))
    return lines


def tokenize_batch(captions: Sequence[str]) -> list[str]:
    """Tokenise captions exactly like one call of the toolkit's ``PTBTokenizer.tokenize``.

    The captions form one text (newlines inside a caption become spaces, captions are joined with newlines),
    so a caption's last token can depend on the next caption, like in the toolkit. Returns one space-joined,
    lower-cased, punctuation-filtered string per caption. Line breaks other than "\\n" (\\r, U+2028, ...)
    shift later captions onto the wrong line exactly as the toolkit's ``zip`` does; captions left without a
    line get "" here (the toolkit drops them).
    """
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"caption {i} must be str, got {type(c).__name__}")
    if not captions:
        return []
    text = "\n".join(c.replace("\n", " ") for c in captions)
    lines = _lex_lines(text)
    out = []
    for i in range(len(captions)):
        toks = lines[i] if i < len(lines) else []
        # the wrapper: line.rstrip().split(" "), then drop PUNCTUATIONS. Tokens hold no " " (the lexer turns
        # inner spaces into U+00A0), so unless the last token ends in whitespace the tokens are the fields.
        if toks and toks[-1][-1].isspace():
            toks = " ".join(toks).rstrip().split(" ")
        out.append(" ".join([w for w in toks if w not in PUNCTUATIONS]))
    return out


def tokenize(captions_for_image: Mapping[Hashable, Sequence[Mapping[str, str]]]) -> dict[Hashable, list[str]]:
    """Drop-in for ``PTBTokenizer().tokenize``: ``{id: [{"caption": str}, ...]}`` -> ``{id: [tokenised str]}``."""
    ids = [k for k, v in captions_for_image.items() for _ in range(len(v))]
    caps = [c["caption"] for v in captions_for_image.values() for c in v]
    out: dict[Hashable, list[str]] = {}
    for k, t in zip(ids, tokenize_batch(caps)):
        out.setdefault(k, []).append(t)
    return out

"""captionaura.ptb against the real toolkit tokenizer: pycocoevalcap's PTBTokenizer, which runs the
stanford-corenlp-3.4.1 jar shipped in the package with Java.

Captions are generated from fragments covering what caption data contains (unicode letters, hashtags,
@handles, emoji inside and outside the BMP, brackets, clitics, quotes, punctuation runs, numbers, fractions,
U+00A0, abbreviations, URLs, smileys), glued with and without spaces and with random capitalisation, so the
lexer's longest-match and look-ahead rules (including across captions of one batch) are exercised.
"""

from __future__ import annotations

import random
import shutil

import pytest

from captionaura import ptb

N_CAPTIONS = 12_000

WORDS = (
    "a an the man woman dog cat dogs people group of on in at with and is are sitting standing riding "
    "large small red white black-and-white t-shirt hot-dog ski b-52 and/or ft/s 24/7 colour grey "
    "café naïve Straße über Ångström façade jalapeño piñata résumé ΣΑΣ Ελλάδα москва 東京 日本語 "
    "cannot gonna gotta wanna lemme gimme o'clock rock'n'roll y'all ma'am don't can't won't isn't "
    "it's man's boss's kids' they're we've I'll he'd 'tis 'twas C++ c# "
    "Mr. Mrs. Dr. St. Mt. Ft. vs. etc. e.g. i.e. U.S. u.s. a.m. p.m. Inc. Corp. Jan. Calif. Wash. wash. "
    "No. 5 fig. 3 ca. 1900 Pty. Ltd. Co. Ltd "
    "3.5 1,000 10:30 2-3 1/2 2 1/2 12/25/2020 50% $5 US$ 5 €5 £5 ¢5 ¥5 ½ ¼ ⅔ ² 555 1234 (650) 555-1234 "
    "#sunset #love2020 #café #23 @john_doe @Ab @1a # @ "
    "http://x.com/a?b=c www.example.org/path foo.com mail@example.com photo.jpg file.txt "
    ":) :-( ;) =D ^_^ (--) =_- <3 <b> </i> <br/> "
    "( ) [ ] { } -LRB- \" ' ` '' `` “ ” ‘ ’ « » ‹ › „ "
    ". , ; : ! ? !!! ?! ... .. .... … -- --- - – — & &amp; &lt; &quot; &nbsp; * / + = < > ~ ^ | \\ _ © ° ±"
).split(" ")
EMOJI = ["😀", "🔥", "👍", "👍🏽", "🇺🇸", "❤️", "☀", "★", "✓", "☺️", "x\u200dy", "\u00a9", "\ufe0f"]
SPACES = [" "] * 12 + ["", "  ", "\u00a0", "\t", " \u00a0"]


def make_caption(rng: random.Random) -> str:
    n = rng.randint(0, 14)
    parts = []
    for _ in range(n):
        r = rng.random()
        if r < 0.1:
            w = rng.choice(EMOJI)
        elif r < 0.15:
            w = str(rng.randint(0, 99999)) if rng.random() < 0.5 else f"{rng.randint(0, 99)}.{rng.randint(0, 99)}"
        else:
            w = rng.choice(WORDS)
        c = rng.random()
        if c < 0.15:
            w = w.capitalize()
        elif c < 0.2:
            w = w.upper()
        parts.append(w)
        parts.append(rng.choice(SPACES))
    s = "".join(parts)
    if rng.random() < 0.3:
        s = s.rstrip() + rng.choice([".", "!", "?", "...", " .", "!!", ":)"])
    if rng.random() < 0.05:
        s = s.replace(" ", "\n", 1)  # the toolkit replaces "\n" inside a caption with a space
    return s


GLUE = list("()[]{}<>\"'`.,;:!?-_/\\*&%$#@+=~^|") + [
    "\u00ad", "\u2019", "\u2018", "\u201c", "\u201d", "\u00ab", "\u00bb", "\u2026", "\u2013", "\u2014",
    "\u0085", "\x7f", "\u200b", "\ufeff", "&apos;", "&#39;", "n't", "'s", "'re", "'ll", "'d", "'m", "'ve",
    "'em", "'n'", "'90s",
]


def random_char(rng: random.Random) -> str:
    lo, hi = rng.choice([(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x6FF), (0x2000, 0x2BFF), (0x3000, 0x30FF),
                         (0x4E00, 0x4E50), (0x1F300, 0x1F6FF), (0xFF00, 0xFFEF)])
    return chr(rng.randint(lo, hi))


def make_glued_caption(rng: random.Random) -> str:
    """Adversarial captions: words, punctuation, symbols and random characters glued with few spaces."""
    parts = []
    for _ in range(rng.randint(0, 12)):
        r = rng.random()
        if r < 0.5:
            parts.append(rng.choice(WORDS))
        elif r < 0.75:
            parts.append(rng.choice(GLUE))
        elif r < 0.85:
            parts.append(random_char(rng))
        else:
            parts.append(str(rng.randint(0, 9999)))
        parts.append(rng.choice(["", " ", " ", "  "]))
    s = "".join(parts)
    c = rng.random()
    return s.upper() if c < 0.1 else (s.capitalize() if c < 0.3 else s)


FRAGMENTS = ['<a href="x y">','<b class=\'q r\'>','</div>','<br />','<!DOCTYPE x>','<?xml v?>','&amp;','&lt;','&gt;','&quot;','&apos;','&mdash;','&ndash;','&nbsp;','&eacute;t&eacute;','caf&eacute;','&#169;','&HT;',
 '(650) 555-1234','555-1234','+1 650 555 1234','650.555.1234','2 1/2','12-3/4','3\\/4','1\u20442','12/25/2020','1-2-99','3.5','.5','-5','+7','1,000,000','10:30','1\u00ad000','²³','\u2081\u2082',
 'U.S.','U.S.A.','e.g.','i.e.','Mr.','Dr.','St.','etc.','Inc.','Corp.','Jan.','Calif.','Mass.','mass.','Wash.','No.','no.','fig.','ca.','Pty.','Co.','Ltd','vs.','a.k.a.','Ph.D.','Jr.','p.m.','A.','I.','B.','Canada-U.S.','U.S.-U.K.','non-U.S.',
 'The','A','It','He','She','They','This','About','Mr.','However','but','and','Two','We',
 ':)',':-(',';P',':D','=]','<3','^_^','(-_-)','>_<','o_O','x.x','(^-^)',
 'a@b.com','<a@b.com>','&lt;a@b.co&gt;','http://x.y/z.','https://a.b/c?d=e,','www.x.co.uk','foo.edu/bar','x.net.',
 'file.txt','a.b.jpg','x.c','Makefile.h',
 '"Hi"','"5"','\'tis','\'twas','\'90s','\'em','y\'all','rock\'n\'roll','O\'Neil','d\'Arc','l\'eau','don\'t','DON\'T','ain\'t','cannot','Cannot','gonna','GONNA','c\'mon','cont\'d','nor\'easter','li\'l',
 'C++','c#','F#','AT&T','S&P-500','S&Ls','R&D','AT&amp;T','pro-','anti-','-LRB-','-rsb-','Cap\'n','c\'est',
 '...','. . .','....','…','--','---','----','-----','?!','!!!','??','¡','¿','„','‚','«','»','‹','›','“','”','‘','’','`','``',"''",
 '€','£','¢','¥','US$','C$','#1','##','@@','__','**','\\*','/','=','+','%','~','^','|','\\','©','®','°','±','×','÷','§','¶','★','❤','☺','⚽','✓','→','∀','≠',
 '😀','👍🏽','🇺🇸','❤️','x\u200dy','\ufe0f','\u200b','\ufeff','\x7f','\u00a0','\u3000','\u2009','\t','\r','\u2028','\u0085','\x0c',
 'naïve','Ångström','ΣΑΣ','москва','東京','日本語','한국어','עברית','العربية','हिन्दी','ไทย','ﾊﾟ']


def make_fragment_caption(rng: random.Random) -> str:
    """Captions built from the lexer's special cases: SGML tags, entities, phone numbers, fractions, dates,
    abbreviations and acronyms followed by sentence starters, smileys, URLs, e-mail, file names, clitics,
    assimilations, quotes, dashes, currency, symbols, emoji and odd whitespace and line breaks."""
    parts = []
    for _ in range(rng.randint(0, 10)):
        parts.append(rng.choice(FRAGMENTS) if rng.random() < 0.7 else rng.choice(WORDS))
        parts.append(rng.choice([" ", " ", " ", "", "  "]))
    return "".join(parts)


def java_tokenize(captions: list[str]) -> list[str]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    return [out[i][0] for i in range(len(captions))]


needs_java = pytest.mark.skipif(
    shutil.which("java") is None,
    reason="java is not installed: the toolkit's PTBTokenizer (stanford-corenlp-3.4.1.jar) cannot run "
    "(make system-deps installs default-jre-headless)",
)


@needs_java
def test_generated_captions_equal_java_ptbtokenizer():
    pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    rng = random.Random(1234)
    captions = [make_caption(rng) for _ in range(N_CAPTIONS)]
    expected = java_tokenize(captions)
    ours = ptb.tokenize_batch(captions)
    bad = [(c, e, o) for c, e, o in zip(captions, expected, ours) if e != o]
    assert not bad, f"{len(bad)} of {len(captions)} differ; first: {bad[:5]!r}"


@needs_java
def test_glued_captions_equal_java_ptbtokenizer():
    pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    rng = random.Random(99)
    captions = [make_glued_caption(rng) for _ in range(3000)]
    expected = java_tokenize(captions)
    ours = ptb.tokenize_batch(captions)
    bad = [(c, e, o) for c, e, o in zip(captions, expected, ours) if e != o]
    assert not bad, f"{len(bad)} of {len(captions)} differ; first: {bad[:5]!r}"


@needs_java
def test_lexer_special_cases_equal_java_ptbtokenizer():
    pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    rng = random.Random(7)
    captions = [make_fragment_caption(rng) for _ in range(4000)]
    expected = java_tokenize(captions)
    ours = ptb.tokenize_batch(captions)
    bad = [(c, e, o) for c, e, o in zip(captions, expected, ours) if e != o]
    assert not bad, f"{len(bad)} of {len(captions)} differ; first: {bad[:5]!r}"


@needs_java
@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_more_captions_equal_java(seed):
    pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    rng = random.Random(seed)
    captions = [make_caption(rng) for _ in range(40_000)] + [make_glued_caption(rng) for _ in range(20_000)]
    captions += [make_fragment_caption(rng) for _ in range(20_000)]
    rng.shuffle(captions)
    expected = java_tokenize(captions)
    ours = ptb.tokenize_batch(captions)
    bad = [(c, e, o) for c, e, o in zip(captions, expected, ours) if e != o]
    assert not bad, f"{len(bad)} of {len(captions)} differ; first: {bad[:5]!r}"


@needs_java
def test_worked_examples_and_batch_context_equal_java():
    pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    captions = [
        "A man's dog (brown) is running -- on the beach...",
        '"Hello," she said; it\'s 3.5 ft/s!',
        "#sunset #love2020 @john_doe 😀🔥 ❤️ ★ café",
        "A sign that says Wash.",
        "the letter b.",
        "A dog",
        "the letter b.",
        "Two dogs",
        "Person at desk :)",
        "2 1/2 cups",
        "etc.",
        "the letter b.",
        "Person at desk :)",
    ]
    assert ptb.tokenize_batch(captions) == java_tokenize(captions)


def test_worked_examples_from_the_spec():
    # cocoeval.md section 2.4, tokenised as one batch (no Java needed)
    cases = {
        "A man's dog (brown) is running -- on the beach...": "a man 's dog -lrb- brown -rrb- is running on the beach",
        "Two people don't like the colour grey & black-and-white photos": "two people do n't like the colour grey & black-and-white photos",
        "A cat!!! Wow?!": "a cat !!! wow ?!",
        "#sunset #love2020 @john_doe 😀🔥 ❤️ ★ café": "#sunset #love 2020 @john_doe ❤ ★ café",
        "He is gonna eat a hot-dog, and I wanna go.": "he is gon na eat a hot-dog and i wan na go",
        "You cannot park here.": "you can not park here",
        "The kids' toys, the boss's desk": "the kids toys the boss 's desk",
        "“Nice” photo of a ‘cat’": "nice photo of a cat",
        "Cost is €5 or £5 or ¢5": "cost is $ 5 or # 5 or cents 5",
        "it can't go [fast] {slow} 50% $5 ½": "it ca n't go -lsb- fast -rsb- -lcb- slow -rcb- 50 % $ 5 1/2",
        "2 1/2 cups": "2\u00a01/2 cups",
        "US$ 5 and A.T.&T. and AT&T": "us$ 5 and a.t. & t. and at&t",
    }
    assert ptb.tokenize_batch(list(cases)) == list(cases.values())
    # batch context: the next caption decides whether "b." keeps its period, and a final ":)" loses its ":"
    assert ptb.tokenize_batch(["The letter b.", "A dog"]) == ["the letter b", "a dog"]
    assert ptb.tokenize_batch(["The letter b."]) == ["the letter b."]
    assert ptb.tokenize_batch(["Person at desk :)", "x"])[0] == "person at desk :-rrb-"
    assert ptb.tokenize_batch(["Person at desk :)"]) == ["person at desk -rrb-"]


@needs_java
def test_greek_final_sigma_equals_java():
    # Java lower-cases a capital sigma to the final form by word-boundary rules that differ from Python's
    pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    rng = random.Random(5)
    pieces = ["ΣΑΣ", "ΟΔΟΣ", "Σ", "ΑΣ", "x", "X", "3", "-", "'", ".", "’", "ﾖ", "丙", "LRB", "555", "e.g.", "A.B",
              '"', "_", "é", "Ω", "σ", "ς"]
    word = lambda: "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))  # noqa: E731
    captions = [f"{word()} {word()}" for _ in range(2000)]
    expected = java_tokenize(captions)
    ours = ptb.tokenize_batch(captions)
    bad = [(c, e, o) for c, e, o in zip(captions, expected, ours) if e != o]
    assert not bad, f"{len(bad)} of {len(captions)} differ; first: {bad[:5]!r}"

"""A tiny, deterministic stand-in for 20news-bydate.tar.gz, for fast tests.

Same layout as the real archive (`20news-bydate-{train,test}/<group>/<numeric name>`, the 20 real
group names), posts that look like the real ones (headers, quote blocks, signatures, latin-1 bytes),
and a built-in signal: every post *starts* its body with words that identify its group and *ends*
with at least `GENERIC_TAIL_TOKENS` words shared by all groups. A model that sees whole posts can
learn the groups; one that keeps only the last few tokens (`pad.maxlen: 5`, pre-truncation) cannot.
"""
from __future__ import annotations

import gzip
import io
import random
import tarfile
from pathlib import Path

GROUPS = (
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
    "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
    "talk.religion.misc",
)
SPLIT_FOLDERS = {"train": "20news-bydate-train", "test": "20news-bydate-test"}

# Words that appear in one group only; each post uses several of its group's words near the start.
GROUP_WORDS = {
    "alt.atheism": "atheist atheism godless secular skeptic unbeliever freethinker agnostic",
    "comp.graphics": "raytracing polygon texture shading bitmap rendering pixel vertex",
    "comp.os.ms-windows.misc": "msdos autoexec winini win31 progman bootlog himem smartdrv",
    "comp.sys.ibm.pc.hardware": "motherboard ide jumper bios eisa vesa ramchip pentium",
    "comp.sys.mac.hardware": "macintosh powerbook quadra nubus appletalk centris lciii syquest",
    "comp.windows.x": "xterm motif xlib widget twm xserver xview openwindows",
    "misc.forsale": "forsale shipping obo asking condition bargain sealed offer",
    "rec.autos": "sedan carburetor transmission dealer mustang horsepower tires coupe",
    "rec.motorcycles": "motorcycle helmet harley countersteer dod biker yamaha kawasaki",
    "rec.sport.baseball": "pitcher inning homerun bullpen shortstop batting dodgers mets",
    "rec.sport.hockey": "goalie puck nhl playoffs penguins bruins slapshot faceoff",
    "sci.crypt": "encryption clipper cipher escrow pgp keysize plaintext nsa",
    "sci.electronics": "resistor capacitor voltage circuit transistor oscilloscope diode amplifier",
    "sci.med": "symptoms doctor diagnosis patients migraine allergy vitamin medication",
    "sci.space": "orbit shuttle nasa launch satellite lunar spacecraft payload",
    "soc.religion.christian": "jesus scripture church gospel baptism salvation apostle sermon",
    "talk.politics.guns": "firearms handgun rifle nra ammunition concealed atf pistol",
    "talk.politics.mideast": "israel israeli arab palestinian lebanon jerusalem armenian turkish",
    "talk.politics.misc": "taxes congress clinton deficit legislation senator liberals welfare",
    "talk.religion.misc": "koresh davidian cult prophecy morality biblical waco occult",
}

# Shared by every group: filler, the generic tail, people, sites.
GENERIC_WORDS = (
    "the a of and to in is that it for on with as this be are was have not but or from at by "
    "they you what all would there their will can about if one so just like some any more also"
).split()
GENERIC_TAIL_TOKENS = 12
FIRST_NAMES = ("John", "Mary", "David", "Susan", "Ren\xe9", "Jos\xe9", "Anne", "Peter", "Linda", "Mike")
LAST_NAMES = ("Smith", "Brown", "Miller", "Davis", "Garc\xeda", "Wilson", "Moore", "Taylor", "Clark", "Hall")
SITES = ("cs.cmu.edu", "athena.mit.edu", "uiuc.edu", "netcom.com", "cco.caltech.edu", "unix.sri.com")
ORGANIZATIONS = ("Carnegie Mellon University", "University of Illinois", "NETCOM On-line Services",
                 "Massachusetts Institute of Technology", "Caf\xe9 Society BBS", "SRI International")
FIXED_MTIME = 733_622_400  # 1993-04-01: fixed so the archive's bytes depend only on the seed


def build_archive(path: str | Path, posts_per_group: int = 6, test_posts_per_group: int = 3,
                  seed: int = 0) -> Path:
    """Write a small 20news-bydate-style `.tar.gz` at `path` and return its path.

    The bytes are a function of the arguments only (fixed mtimes, no gzip file name), so two builds
    with the same seed have the same sha256.
    """
    if posts_per_group < 1 or test_posts_per_group < 1:
        raise ValueError("posts_per_group and test_posts_per_group must be >= 1")
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"train": posts_per_group, "test": test_posts_per_group}
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for split, folder in SPLIT_FOLDERS.items():
                _add_directory(tar, folder)
                # Reverse order: the reader must sort, not trust the order of the members.
                for group in reversed(GROUPS):
                    _add_directory(tar, f"{folder}/{group}")
                    for number in _file_numbers(rng, counts[split]):
                        post = make_post(rng, group)
                        _add_file(tar, f"{folder}/{group}/{number}", post.encode("latin-1"))
    path.write_bytes(buffer.getvalue())
    return path


def _file_numbers(rng: random.Random, count: int) -> list[int]:
    """Numeric names whose string order differs from their numeric order (9 < 10 but "10" < "9")."""
    numbers = [9, rng.randint(10, 89)] + rng.sample(range(10_000, 100_000), max(0, count - 2))
    return numbers[:count]  # numeric order, as tar would list them after `ls | sort -n`


def make_post(rng: random.Random, group: str) -> str:
    """One post: headers, blank line, group words first, maybe a quote block, generic tail, maybe a signature."""
    author = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    email = f"{author.split()[0].lower()}@{rng.choice(SITES)}"
    topic = rng.sample(GROUP_WORDS[group].split(), 4)
    body = [_sentence(topic[:3] + rng.sample(GENERIC_WORDS, 3)).capitalize(),
            _sentence(topic[3:] + rng.sample(GENERIC_WORDS, 4)).capitalize()]
    if rng.random() < 0.5:
        body = _quote_block(rng, topic) + body
    # A paragraph break before the tail: sklearn's footer filter cuts at the last blank line, so
    # the group words survive every `remove` setting.
    body += ["", _sentence(rng.sample(GENERIC_WORDS, GENERIC_TAIL_TOKENS)) + "."]
    if rng.random() < 0.4:
        dashes = rng.choice(("--", "--", "-----", ""))  # "" = a blank line, which sklearn also treats as a separator
        body += [dashes, author, email]
    if rng.random() < 0.2:
        body.append("")  # trailing blank line, as many real posts have
    headers = [f"From: {email} ({author})", f"Subject: Re: {' '.join(topic[:2])}",
               f"Organization: {rng.choice(ORGANIZATIONS)}", f"Lines: {len(body)}"]
    return "\n".join(headers) + "\n\n" + "\n".join(body) + "\n"


def _quote_block(rng: random.Random, topic: list[str]) -> list[str]:
    quoted = rng.choice(FIRST_NAMES).lower() + "@" + rng.choice(SITES)
    mark = rng.choice((">", ">", "|"))
    return [f"In article <{rng.randint(1000, 9999)}@{rng.choice(SITES)}> {quoted} writes:",
            f"{mark} {_sentence([topic[0]] + rng.sample(GENERIC_WORDS, 4))}",
            f"{mark} {_sentence(rng.sample(GENERIC_WORDS, 5))}",
            ""]


def _sentence(words: list[str]) -> str:
    return " ".join(words)


def _add_directory(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = FIXED_MTIME
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = FIXED_MTIME
    tar.addfile(info, io.BytesIO(data))

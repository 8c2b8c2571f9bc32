"""The offline analyzer: a deterministic keyword/heuristic stand-in for the LLM analyzer.

It runs when no model is configured and whenever a model call fails, so it must never raise on a
valid request, must give the same answer for the same input (a replayed job plans the same ad), and
must still be good enough that planning and prompting produce a sensible ad from it.

It works the way the OpenAI analyzer does: first an :class:`AnalysisResult` (what a model would
return), then :func:`to_analysis` adds the brand profile and the provenance. Both analyzers share
that last step, so the pipeline cannot tell them apart except by ``source``.
"""

import colorsys
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from schemas.api import (
    Analysis,
    AnalysisResult,
    Brand,
    BrandProfile,
    CallToAction,
    GenerationRequest,
    VisualElement,
)

Pacing = Literal["slow", "moderate", "fast"]
Source = Literal["openai", "offline"]
Temperature = Literal["warm", "cool", "neutral"]

MAX_THEMES = 5
MAX_MESSAGES = 5
MAX_VISUALS = 6
MAX_MESSAGE_CHARS = 140
MAX_PHRASE_WORDS = 3
DEFAULT_TONE = "friendly"
DEFAULT_STYLE = "cinematic"
DEFAULT_AUDIENCE = "general audience"

# Lexicons hold base forms; tokens are reduced with ``_stem`` before lookup. Order matters: on a tie
# the earlier entry wins, which keeps the answer deterministic.
TONE_LEXICON: Mapping[str, tuple[str, ...]] = {
    "playful": (
        "playful",
        "fun",
        "funny",
        "silly",
        "cute",
        "joy",
        "joyful",
        "happy",
        "laugh",
        "cheeky",
        "whimsical",
        "cartoon",
        "toy",
        "candy",
        "party",
        "quirky",
        "colorful",
        "colourful",
    ),
    "energetic": (
        "energetic",
        "energy",
        "fast",
        "power",
        "powerful",
        "extreme",
        "sport",
        "workout",
        "action",
        "dynamic",
        "intense",
        "adrenaline",
        "speed",
        "race",
        "racing",
        "run",
        "running",
        "sprint",
        "sprinting",
        "jump",
        "dance",
        "bold",
        "explosive",
        "thrilling",
    ),
    "luxurious": (
        "luxury",
        "luxurious",
        "premium",
        "elegant",
        "exclusive",
        "gold",
        "golden",
        "sophisticated",
        "refined",
        "couture",
        "jewelry",
        "jewellery",
        "perfume",
        "fragrance",
        "velvet",
        "silk",
        "diamond",
        "timeless",
        "craftsmanship",
        "bespoke",
    ),
    "calm": (
        "calm",
        "relax",
        "relaxing",
        "peaceful",
        "serene",
        "gentle",
        "soothing",
        "mindful",
        "spa",
        "meditation",
        "quiet",
        "zen",
        "tranquil",
        "slow",
        "soft",
        "cozy",
        "cosy",
        "sleep",
        "breathe",
    ),
    "professional": (
        "professional",
        "business",
        "enterprise",
        "productivity",
        "software",
        "saas",
        "b2b",
        "workflow",
        "office",
        "finance",
        "financial",
        "secure",
        "security",
        "reliable",
        "efficient",
        "platform",
        "analytics",
        "data",
        "cloud",
        "team",
    ),
    "inspirational": (
        "inspire",
        "inspiring",
        "inspirational",
        "dream",
        "journey",
        "future",
        "achieve",
        "hope",
        "believe",
        "empower",
        "empowering",
        "change",
        "possible",
        "potential",
        "rise",
        "courage",
    ),
    "heartfelt": (
        "heartfelt",
        "family",
        "love",
        "home",
        "together",
        "friend",
        "memory",
        "warm",
        "care",
        "caring",
        "kindness",
        "moment",
        "grandma",
        "grandmother",
        "wedding",
    ),
}

STYLE_LEXICON: Mapping[str, tuple[str, ...]] = {
    "cinematic": ("cinematic", "film", "epic", "dramatic", "movie", "story", "storytelling", "widescreen"),
    "minimal": ("minimal", "minimalist", "clean", "simple", "sleek", "modern", "white", "elegant"),
    "vibrant": ("vibrant", "colorful", "colourful", "neon", "bright", "pop", "bold", "saturated", "vivid"),
    "documentary": ("documentary", "real", "authentic", "candid", "behind", "community", "handheld"),
    "retro": ("retro", "vintage", "nostalgic", "nostalgia", "analog", "80s", "90s", "classic", "film grain"),
    "animated": (
        "animated",
        "animation",
        "cartoon",
        "illustration",
        "illustrated",
        "anime",
        "3d",
        "claymation",
    ),
}

STYLE_BY_TONE: Mapping[str, str] = {
    "playful": "vibrant",
    "energetic": "vibrant",
    "luxurious": "cinematic",
    "calm": "minimal",
    "professional": "minimal",
    "inspirational": "cinematic",
    "heartfelt": "documentary",
}

AUDIENCE_LEXICON: Mapping[str, tuple[str, ...]] = {
    "kids": ("kid", "child", "children", "toddler", "toy", "cartoon", "playground"),
    "parents": ("parent", "mom", "mum", "dad", "baby", "family", "parenting", "nursery"),
    "gamers": ("game", "gamer", "gaming", "esport", "esports", "console", "controller", "arcade"),
    "professionals": (
        "professional",
        "business",
        "office",
        "enterprise",
        "productivity",
        "b2b",
        "workflow",
        "team",
        "career",
        "saas",
    ),
    "athletes": (
        "athlete",
        "fitness",
        "workout",
        "gym",
        "running",
        "runner",
        "sport",
        "training",
        "marathon",
        "sprint",
        "sprinting",
        "yoga",
    ),
    "students": ("student", "college", "university", "campus", "study", "school", "exam"),
    "travelers": ("travel", "traveler", "traveller", "trip", "vacation", "holiday", "adventure", "hotel"),
    "food lovers": ("food", "recipe", "restaurant", "coffee", "taste", "delicious", "chef", "meal", "pizza"),
    "tech enthusiasts": (
        "tech",
        "gadget",
        "smartphone",
        "phone",
        "ai",
        "device",
        "laptop",
        "robot",
        "software",
    ),
    "pet owners": ("dog", "cat", "pet", "puppy", "kitten"),
    "luxury shoppers": ("luxury", "premium", "couture", "jewelry", "jewellery", "perfume", "designer"),
}

# Intent keyword → call to action; ``{brand}`` is the brand name, or the fallback words without one.
CTA_INTENTS: Sequence[tuple[tuple[str, ...], str, str]] = (
    (("download", "app", "install"), "Download {brand} today", "Download the app today"),
    (("subscribe", "join", "signup", "membership", "member"), "Join {brand} today", "Join today"),
    (("book", "reserve", "reservation", "hotel", "trip", "vacation"), "Book with {brand}", "Book now"),
    (
        ("shop", "buy", "sale", "store", "order", "collection", "discount", "deal"),
        "Shop {brand} now",
        "Shop now",
    ),
    (("restaurant", "cafe", "café", "menu", "bakery", "bar"), "Visit {brand} today", "Visit us today"),
    (("try", "trial", "demo", "free"), "Try {brand} today", "Try it today"),
)
DEFAULT_CTA_BRAND = "Discover {brand}"
DEFAULT_CTA = "Learn more"

TONE_COLOR_MOOD: Mapping[str, str] = {
    "playful": "warm, bright candy colours",
    "energetic": "warm, bold high-contrast colours",
    "luxurious": "neutral, deep blacks with gold accents",
    "calm": "cool, soft pastel blues and greens",
    "professional": "cool, clean blues and greys",
    "inspirational": "warm, golden-hour light",
    "heartfelt": "warm, soft natural tones",
}
DEFAULT_COLOR_MOOD = "neutral, natural balanced colours"

TONE_PACING: Mapping[str, Pacing] = {
    "playful": "fast",
    "energetic": "fast",
    "luxurious": "slow",
    "calm": "slow",
    "heartfelt": "slow",
}
PACING_STEPS: tuple[Pacing, ...] = ("slow", "moderate", "fast")

STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they this
    those through to too under until up very was we were what when where which while who whom why will
    with would you your yours yourself yourselves us let lets let's it's i'm we're you're they're
    don't can't won't via per across along around within without onto toward towards upon
    thing things something everything anything nothing one ones way ways lot lots kind really
    ad ads advert advertisement commercial video videos clip clips spot promo reel teaser trailer
    scene scenes shot shots footage second seconds sec secs minute minutes long short
    create creating make making made generate produce design write build show showing shows shown
    feature featuring features introduce introducing present presenting showcase showcasing
    highlight highlighting promote promoting advertise advertising sell selling capture capturing
    display displaying depict depicting include including get gets getting try see watch need needs
    want wants like use using used help helps bring brings give gives take takes tell tells
    feel feels experience discover enjoy meet join shop buy order download celebrate unlock elevate
    transform boost start every ever each will shall may might must also even still yet already
    new latest best great good amazing awesome incredible ultimate perfect nice cool super very
    our we brand product products company
    """.split()
)

#: Mood and style adjectives: they describe the ad, they are not things in the picture.
MOOD_WORDS: frozenset[str] = frozenset(
    """
    playful fun funny silly cute joyful happy cheeky whimsical quirky colorful colourful energetic
    fast powerful extreme dynamic intense bold explosive thrilling luxurious premium elegant exclusive
    sophisticated refined timeless calm relaxing peaceful serene gentle soothing mindful quiet zen
    tranquil slow soft cozy cosy professional secure reliable efficient inspiring inspirational
    hopeful heartfelt warm caring cinematic epic dramatic minimal minimalist clean simple sleek modern
    vibrant bright vivid saturated authentic candid retro vintage nostalgic classic animated stylish
    emotional uplifting friendly fresh
    """.split()
)

#: Words that follow a clause-initial imperative verb ("Breathe in", "Taste the", "Grab your").
IMPERATIVE_FOLLOWERS: frozenset[str] = frozenset(
    "the a an your our every in out up down more it this that with into off on away back yourself".split()
)

# Words ending in "-ing" that are nouns, so they do not end a noun phrase (see ``_phrases``).
ING_NOUNS: frozenset[str] = frozenset(
    """
    morning evening clothing building ceiling painting wedding pudding ring king spring string swing
    wing sibling ping bling offering earring awning icing frosting stuffing lightning lighting
    landing sling viking housing packaging
    """.split()
)

_TOKEN_RE = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_CHUNK_SPLIT_RE = re.compile(r"[,.;:!?()\[\]{}\"“”…/|\n]+|\s[-\u2013\u2014]+\s")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|[\n;]+")
_DURATION_RE = re.compile(r"^\d+(?:-?(?:s|sec|secs|second|seconds|min|minute|minutes))?$")
_META_NOUNS = r"(?:ad|ads|advert|advertisement|commercial|video|spot|promo|clip|reel|teaser)"
_META_VERB_RE = re.compile(
    r"^(?:please\s+)?(?:create|make|generate|produce|design|write|build|give\s+me|i\s+want|we\s+need)\b"
    rf"\s+(?:\S+\s+){{0,6}}?{_META_NOUNS}\b"
    r"\s*(?:for|about|of|showing|featuring|that\s+shows|where|with|:)?\s*",
    re.IGNORECASE,
)
_META_LEADIN_RE = re.compile(
    r"^(?:introducing|presenting|announcing|meet|say\s+hello\s+to)\s+", re.IGNORECASE
)
_META_ARTICLE_RE = re.compile(
    rf"^(?:a|an|the|one)\s+(?:\S+\s+){{0,3}}?{_META_NOUNS}\s+"
    r"(?:for|about|of|showing|featuring|that\s+shows|where|with)\b\s*",
    re.IGNORECASE,
)

#: Characters trimmed from the ends of cut or cleaned text (spaces, punctuation, dashes).
_TRIM = " ,;:-\u2013\u2014"


@dataclass(frozen=True)
class _Phrase:
    """A candidate noun phrase: its text, the token index where it first appears, its head's stem."""

    text: str
    position: int
    head: str


def _stem(word: str) -> str:
    """A tiny plural folding so that "kids" matches "kid" and "shoes" counts with "shoe"."""
    word = word.lower().replace("\u2019", "'")
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _tokens(text: str) -> list[str]:
    """Lowercase word tokens, keeping inner apostrophes and hyphens ("15-second", "kid's")."""
    return _TOKEN_RE.findall(text.lower())


def _is_content(token: str) -> bool:
    """A word worth keeping as a theme or in a phrase: not filler, not a number, not a duration."""
    return (
        len(token) >= 3
        and token not in STOPWORDS
        and _stem(token) not in STOPWORDS
        and not _DURATION_RE.match(token)
    )


def _stem_counts(tokens: Iterable[str]) -> Counter[str]:
    return Counter(_stem(t) for t in tokens)


def _score(counts: Counter[str], lexicon: Mapping[str, tuple[str, ...]]) -> list[tuple[str, int]]:
    """Lexicon keys with their hit counts, best first; ties keep the lexicon's order."""
    scored = [(key, sum(counts[_stem(w)] for w in words)) for key, words in lexicon.items()]
    hits = [(key, score) for key, score in scored if score > 0]
    return sorted(hits, key=lambda item: -item[1])


def _best(counts: Counter[str], lexicon: Mapping[str, tuple[str, ...]]) -> str | None:
    scored = _score(counts, lexicon)
    return scored[0][0] if scored else None


def _tone_key(tone_text: str | None, counts: Counter[str]) -> str | None:
    """The canonical tone ("playful", ...) that drives style, pacing and colour.

    A brand tone is free text ("fun and cheeky"), so it is matched against the lexicon first; the
    prompt decides when the brand tone says nothing the lexicon knows.
    """
    if tone_text:
        from_brand = _best(_stem_counts(_tokens(tone_text)), TONE_LEXICON)
        if from_brand is not None:
            return from_brand
    return _best(counts, TONE_LEXICON)


def _tone(request: GenerationRequest, key: str | None) -> str:
    """The brand's declared tone wins over anything guessed from the prompt."""
    if request.brand is not None and request.brand.tone:
        return request.brand.tone.lower()
    return key or DEFAULT_TONE


def _style(counts: Counter[str], tone_key: str | None) -> str:
    return _best(counts, STYLE_LEXICON) or STYLE_BY_TONE.get(tone_key or "", DEFAULT_STYLE)


def _narrative(duration: int, include_cta: bool) -> str:
    """More beats when there is time for them; a five-second spot cannot tell a problem/solution story."""
    if duration <= 10:
        beats = ["hook", "payoff"]
    elif duration <= 30:
        beats = ["hook", "benefit"]
    elif duration <= 60:
        beats = ["hook", "problem", "solution", "benefit"]
    else:
        beats = ["hook", "story setup", "product in action", "proof", "benefit"]
    if include_cta:
        beats.append("call to action")
    return " → ".join(beats)


def _audience(counts: Counter[str]) -> str:
    top = [key for key, _ in _score(counts, AUDIENCE_LEXICON)[:2]]
    return " and ".join(top) if top else DEFAULT_AUDIENCE


def _brand_stems(brand: Brand | None) -> frozenset[str]:
    return frozenset(_stem(t) for t in _tokens(brand.name)) if brand is not None else frozenset()


def _themes(tokens: Sequence[str], exclude: frozenset[str]) -> list[str]:
    """The most frequent content words, earliest first on ties; the brand name is not a theme."""
    first: dict[str, tuple[int, str]] = {}
    counts: Counter[str] = Counter()
    for i, token in enumerate(tokens):
        stem = _stem(token)
        if not _is_content(token) or stem in exclude:
            continue
        counts[stem] += 1
        first.setdefault(stem, (i, token))
    ranked = sorted(counts, key=lambda s: (-counts[s], first[s][0]))
    return [first[s][1] for s in ranked[:MAX_THEMES]]


def _chunks(text: str) -> list[str]:
    return [c for c in _CHUNK_SPLIT_RE.split(text) if c.strip()]


def _runs(tokens: Sequence[str], exclude: frozenset[str]) -> list[list[tuple[int, str]]]:
    """Runs of consecutive content words, the nearest thing to noun phrases without a tagger.

    A verb in "-ing" after a noun ("car driving") ends the phrase; as the first word it is kept as a
    modifier ("running shoes"). Brand-name words split phrases: the logo stands for the brand.
    """
    runs: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    for i, token in enumerate(tokens):
        content = _is_content(token) and _stem(token) not in exclude
        is_verb = token.endswith("ing") and token not in ING_NOUNS
        if not content or (is_verb and current):
            if current:
                runs.append(current)
            current = [(i, token)] if content else []
            continue
        current.append((i, token))
    if current:
        runs.append(current)
    return runs


def _is_visual(words: Sequence[str]) -> bool:
    """A lone gerund ("driving") or mood adjective ("calm") is not something a camera can film."""
    if len(words) > 1:
        return True
    word = words[0]
    return not (word.endswith("ing") and word not in ING_NOUNS) and _stem(word) not in MOOD_WORDS


def _drop_imperative(tokens: list[str]) -> list[str]:
    """Blank a clause-initial verb in the imperative ("Breathe in", "Grab your"), keeping positions."""
    if len(tokens) > 1 and tokens[1] in IMPERATIVE_FOLLOWERS:
        return ["", *tokens[1:]]
    return tokens


def _phrases(text: str, exclude: frozenset[str]) -> list[_Phrase]:
    """Candidate noun phrases in text order, at most three words each (English heads come last)."""
    phrases: list[_Phrase] = []
    offset = 0
    for chunk in _chunks(text):
        tokens = _drop_imperative(_tokens(chunk))
        for run in _runs(tokens, exclude):
            words = run[-MAX_PHRASE_WORDS:]
            if _is_visual([w for _, w in words]):
                text_ = " ".join(w for _, w in words)
                phrases.append(_Phrase(text_, offset + words[0][0], _stem(words[-1][1])))
        offset += len(tokens)
    return phrases


def _visual_elements(request: GenerationRequest, counts: Counter[str]) -> list[VisualElement]:
    """Noun phrases ranked by how early they appear and how often their head word recurs.

    Phrases come from the prompt without its "make an ad for" preamble, so the mood words there
    ("a calm, relaxing video") are not mistaken for things to film.
    """
    subject = ". ".join(_strip_meta(s) for s in _SENTENCE_SPLIT_RE.split(request.prompt))
    phrases = _phrases(subject, _brand_stems(request.brand))
    total = max(len(_tokens(subject)), 1)
    seen: set[str] = set()
    scored: list[tuple[float, int, str]] = []
    for phrase in phrases:
        if phrase.head in seen:  # "shoes" adds nothing after "running shoes"
            continue
        seen.add(phrase.head)
        early = 1.0 - phrase.position / total
        importance = min(1.0, 0.3 + 0.5 * early + 0.1 * (counts[phrase.head] - 1))
        scored.append((round(max(importance, 0.05), 2), phrase.position, phrase.text))
    scored.sort(key=lambda item: (-item[0], item[1]))
    elements = [VisualElement(name=text, importance=imp) for imp, _, text in scored[:MAX_VISUALS]]
    brand = request.brand
    if brand is not None and brand.logo_url:
        elements.append(VisualElement(name=f"{brand.name} logo", importance=0.6))
        elements.sort(key=lambda e: -e.importance)
    return elements


def shorten(text: str, limit: int, *, ellipsis: str = "…") -> str:
    """Cut ``text`` to at most ``limit`` characters at a word boundary, never inside a word."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    room = limit - len(ellipsis)
    if room <= 0:
        return ellipsis[:limit]
    cut = text[: room + 1]
    space = cut.rfind(" ")
    head = cut[:space] if space > 0 else text[:room]
    return head.rstrip(_TRIM) + ellipsis


def _strip_meta(sentence: str) -> str:
    """Drop a preamble ("Create a 15-second ad for", "An ad about", "Introducing") so the subject remains."""
    for pattern in (_META_VERB_RE, _META_ARTICLE_RE, _META_LEADIN_RE):
        stripped = pattern.sub("", sentence, count=1).strip(_TRIM)
        if len(stripped) >= 3:
            sentence = stripped
    return sentence


def _clean_sentence(sentence: str) -> str:
    """A prompt sentence as an on-message line: the "make an ad for…" preamble and final stop removed."""
    sentence = _strip_meta(" ".join(sentence.split()).strip(_TRIM)).rstrip(".").strip()
    if not sentence:
        return ""
    return shorten(sentence[0].upper() + sentence[1:], MAX_MESSAGE_CHARS)


def _messages(request: GenerationRequest) -> list[str]:
    """The prompt's own sentences, in order, then the brand tagline: what the ad must say."""
    candidates = [_clean_sentence(s) for s in _SENTENCE_SPLIT_RE.split(request.prompt)]
    if request.brand is not None and request.brand.tagline:
        candidates.append(request.brand.tagline)
    messages: list[str] = []
    seen: set[str] = set()
    for message in candidates:
        if message and message.lower() not in seen:
            seen.add(message.lower())
            messages.append(message)
    return messages[:MAX_MESSAGES] or [shorten(request.prompt, MAX_MESSAGE_CHARS)]


def _hex_rgb(color: str) -> tuple[float, float, float]:
    value = color.lstrip("#")
    return (int(value[0:2], 16) / 255, int(value[2:4], 16) / 255, int(value[4:6], 16) / 255)


def color_temperature(color: str) -> Temperature:
    """Warm (reds, oranges, yellows, magentas), cool (greens, blues, purples) or neutral (greys)."""
    hue, lightness, saturation = colorsys.rgb_to_hls(*_hex_rgb(color))
    if saturation < 0.15 or lightness < 0.08 or lightness > 0.95:
        return "neutral"
    degrees = hue * 360
    return "warm" if degrees < 75 or degrees >= 330 else "cool"


def _hue_name(color: str) -> str:
    hue, lightness, saturation = colorsys.rgb_to_hls(*_hex_rgb(color))
    if saturation < 0.15 or lightness < 0.08 or lightness > 0.95:
        return "black" if lightness < 0.2 else "white" if lightness > 0.85 else "grey"
    degrees = hue * 360
    for limit, name in (
        (15, "red"),
        (45, "orange"),
        (75, "yellow"),
        (165, "green"),
        (195, "teal"),
        (255, "blue"),
        (290, "purple"),
        (345, "pink"),
    ):
        if degrees < limit:
            return name
    return "red"


def _join_words(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def palette_mood(colors: Sequence[str]) -> str:
    """The colour mood of a brand palette, e.g. "warm, vivid palette of red and orange".

    The first word is always the temperature, so downstream code (and people) can rely on it.
    """
    votes = Counter(color_temperature(c) for c in colors)
    temperature: Temperature = "neutral"
    if votes["warm"] > votes["cool"]:
        temperature = "warm"
    elif votes["cool"] > votes["warm"]:
        temperature = "cool"
    hls = [colorsys.rgb_to_hls(*_hex_rgb(c)) for c in colors]
    lightness = sum(h[1] for h in hls) / len(hls)
    saturation = sum(h[2] for h in hls) / len(hls)
    if lightness > 0.7:
        feel = "light, airy"
    elif lightness < 0.3:
        feel = "dark, moody"
    elif saturation > 0.6:
        feel = "vivid"
    else:
        feel = "balanced"
    names = list(dict.fromkeys(_hue_name(c) for c in colors))[:3]
    return f"{temperature}, {feel} palette of {_join_words(names)}"


def _color_mood(request: GenerationRequest, tone_key: str | None) -> str:
    if request.brand is not None and request.brand.colors:
        return palette_mood(request.brand.colors)
    return TONE_COLOR_MOOD.get(tone_key or "", DEFAULT_COLOR_MOOD)


def _pacing(tone_key: str | None, duration: int) -> Pacing:
    """Tone sets the base tempo; short spots cut faster and long ones breathe more."""
    step = PACING_STEPS.index(TONE_PACING.get(tone_key or "", "moderate"))
    if duration <= 10:
        step += 1
    elif duration >= 60:
        step -= 1
    return PACING_STEPS[max(0, min(step, len(PACING_STEPS) - 1))]


def _call_to_action(request: GenerationRequest, counts: Counter[str]) -> CallToAction:
    """The user's CTA verbatim, else one matched to the prompt's intent (shop, download, book, ...)."""
    if request.options.cta_text:
        return CallToAction(text=request.options.cta_text, placement="end")
    name = request.brand.name if request.brand is not None else None
    for words, with_brand, without_brand in CTA_INTENTS:
        if any(counts[_stem(w)] for w in words):
            text = with_brand.format(brand=name) if name else without_brand
            return CallToAction(text=text, placement="end")
    text = DEFAULT_CTA_BRAND.format(brand=name) if name else DEFAULT_CTA
    return CallToAction(text=text, placement="end")


def offline_result(request: GenerationRequest) -> AnalysisResult:
    """What the offline analyzer says about the request, in the same shape a model returns."""
    tokens = _tokens(request.prompt)
    counts = _stem_counts(tokens)
    brand_tone = request.brand.tone if request.brand is not None else None
    tone_key = _tone_key(brand_tone, counts)
    return AnalysisResult(
        tone=_tone(request, tone_key),
        style=_style(counts, tone_key),
        narrative_structure=_narrative(request.duration_seconds, request.options.include_cta),
        target_audience=_audience(counts),
        key_themes=_themes(tokens, _brand_stems(request.brand)),
        key_messages=_messages(request),
        visual_elements=_visual_elements(request, counts),
        color_mood=_color_mood(request, tone_key),
        pacing=_pacing(tone_key, request.duration_seconds),
        call_to_action=_call_to_action(request, counts),
    )


def _dedupe(values: Iterable[str]) -> list[str]:
    """First spelling of each value wins; comparison ignores case."""
    out: dict[str, str] = {}
    for value in values:
        out.setdefault(value.casefold(), value)
    return list(out.values())


def merge_brand(brand: Brand | None) -> BrandProfile | None:
    """The brand as the pipeline applies it: normalised palette and fonts, and the compliance rules."""
    if brand is None:
        return None
    avoid = (" ".join(word.split()).lower() for word in brand.guidelines.dont)
    return BrandProfile(
        name=brand.name,
        palette=_dedupe(c.upper() for c in brand.colors),
        typography=_dedupe(" ".join(f.split()) for f in brand.fonts if f.strip()),
        tagline=brand.tagline,
        avoid_words=_dedupe(w for w in avoid if w),
        required_disclaimer=brand.guidelines.required_disclaimer,
    )


def to_analysis(
    result: AnalysisResult,
    request: GenerationRequest,
    *,
    source: Source,
    fallback_reason: str | None = None,
) -> Analysis:
    """Wrap any analyzer's result with the brand profile and provenance (shared by both analyzers)."""
    return Analysis(
        **result.model_dump(),
        brand=merge_brand(request.brand),
        source=source,
        fallback_reason=fallback_reason,
    )


def analyze_offline(request: GenerationRequest, *, fallback_reason: str | None = None) -> Analysis:
    """Analyse without a model; ``fallback_reason`` says why, when it stands in for a failed model call."""
    return to_analysis(offline_result(request), request, source="offline", fallback_reason=fallback_reason)

"""HTTP API bodies: what clients send and what the gateway answers."""

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
)

AspectRatio = Literal["16:9", "9:16", "1:1"]
GenerationStatus = Literal[
    "queued",
    "analyzing",
    "planning",
    "prompting",
    "generating",
    "assembling",
    "completed",
    "failed",
    "canceled",
]
ClipStatus = Literal["pending", "submitted", "processing", "succeeded", "failed", "canceled"]
SceneKind = Literal["intro", "development", "cta"]
Resolution = Literal["480p", "720p", "1080p"]
Transition = Literal["cut", "crossfade"]

#: Forward order of generation statuses; the terminal ones share the last rank.
STATUS_ORDER: tuple[GenerationStatus, ...] = (
    "queued",
    "analyzing",
    "planning",
    "prompting",
    "generating",
    "assembling",
    "completed",
)
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "canceled"})

#: Ids are matched whole (``fullmatch``; ``\Z``, because ``$`` would also accept a trailing newline).
GENERATION_ID_RE = re.compile(r"^gen_[0-9a-f]{32}\Z")
CLIP_ID_RE = re.compile(r"^clip_[0-9]{2,3}\Z")


def status_rank(status: str) -> int:
    """Rank used to keep statuses moving forward only (terminal statuses rank highest)."""
    if status in TERMINAL:
        return len(STATUS_ORDER)
    return STATUS_ORDER.index(status)  # type: ignore[arg-type,unused-ignore]


def _is_control(ch: str) -> bool:
    """C0, DEL and C1 controls: NUL and friends break Postgres jsonb, logs and terminals downstream."""
    code = ord(ch)
    return code < 32 or 127 <= code < 160


def _no_control_chars(value: Any) -> Any:
    """Free text (prompt, descriptions, guidelines): line breaks and tabs allowed, no other control.

    Runs before whitespace is stripped, so a control at either end is refused too, not trimmed away.
    """
    if isinstance(value, str) and any(_is_control(ch) and ch not in "\n\r\t" for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _single_line(value: Any) -> Any:
    """Names, fonts, CTA, URLs: no control character at all, not even a line break (nor at the ends)."""
    if isinstance(value, str) and any(_is_control(ch) for ch in value):
        raise ValueError("must not contain control characters (nor line breaks or tabs)")
    return value


def _integral(value: Any) -> Any:
    """JSON has one number type: ``15.0`` is the integer 15 (as JSON Schema's ``integer`` says); ``15.5``,
    ``"15"`` and ``true`` stay refused by the strict int that follows."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Integers as JSON means them (no strings, booleans or fractions). The bounds go before the validator,
# or pydantic could not state them in the JSON Schema.
Seed = Annotated[StrictInt, Field(ge=0, le=2**32 - 1), BeforeValidator(_integral)]
DurationSeconds = Annotated[StrictInt, Field(ge=5, le=120), BeforeValidator(_integral)]


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/$.?#][^\s]*", value):
        raise ValueError("must be an http(s) URL")
    return value


# The same rules as JSON Schema patterns, for the OpenAPI document (pydantic does not derive them from
# the validators above): ECMA-262 and Python ``re`` read them alike. ``_WS`` is what stripping removes
# besides controls (Unicode White_Space), so "not blank" means one character outside both.
_CTRL = r"\x00-\x1f\x7f-\x9f"
_TEXT_CTRL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_WS = r" \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
LINE_PATTERN = rf"^[^{_CTRL}]*[^{_CTRL}{_WS}][^{_CTRL}]*$"
TEXT_PATTERN = rf"^[^{_TEXT_CTRL}]*[^{_CTRL}{_WS}][^{_TEXT_CTRL}]*$"
OPTIONAL_TEXT_PATTERN = rf"^[^{_TEXT_CTRL}]*$"
URL_PATTERN = rf"^[{_WS}]*https?://[^{_CTRL}{_WS}/$.?#][^{_CTRL}{_WS}]*[{_WS}]*$"
NOT_BLANK_PATTERN = rf"^[\s\S]*[^{_WS}\t\n\v\f\r\x1c-\x1f\x85][\s\S]*$"


def _documented(pattern: str) -> Any:
    """The pattern a validator enforces, stated in the JSON Schema (validation stays with the validator)."""
    return Field(json_schema_extra={"pattern": pattern})


#: One line of text: a name, a font, a tone.
Line = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    _documented(LINE_PATTERN),
    BeforeValidator(_single_line),
]
#: A short piece of free text (a guideline): may hold line breaks and tabs.
ShortText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    _documented(TEXT_PATTERN),
    BeforeValidator(_no_control_chars),
]
LongText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=1000),
    _documented(OPTIONAL_TEXT_PATTERN),
    BeforeValidator(_no_control_chars),
]
HexColor = Annotated[str, StringConstraints(pattern=r"^#[0-9A-Fa-f]{6}$")]
Url = Annotated[
    str,
    StringConstraints(max_length=2000),
    AfterValidator(_http_url),
    _documented(URL_PATTERN),
    BeforeValidator(_single_line),
]


class Input(BaseModel):
    """Inputs reject unknown fields so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Guidelines(Input):
    do: list[ShortText] = Field(default_factory=list, max_length=20)
    dont: list[ShortText] = Field(default_factory=list, max_length=50)
    required_disclaimer: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=300),
            _documented(TEXT_PATTERN),
            BeforeValidator(_no_control_chars),
        ]
        | None
    ) = None


class Brand(Input):
    name: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
        _documented(LINE_PATTERN),
        BeforeValidator(_single_line),
    ]
    colors: list[HexColor] = Field(default_factory=list, max_length=8)
    fonts: list[
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=60),
            _documented(LINE_PATTERN),
            BeforeValidator(_single_line),
        ]
    ] = Field(default_factory=list, max_length=4)
    tone: Line | None = None
    tagline: Line | None = None
    logo_url: Url | None = None
    guidelines: Guidelines = Field(default_factory=Guidelines)


class Options(Input):
    parallel_clips: StrictBool = True
    negative_prompt: LongText | None = None
    seed: Seed | None = None
    include_cta: StrictBool = True
    cta_text: (
        Annotated[
            str,
            StringConstraints(strip_whitespace=True, min_length=1, max_length=80),
            _documented(LINE_PATTERN),
            BeforeValidator(_single_line),
        ]
        | None
    ) = None
    #: The delivery size (see ``DELIVERY_SIZES``).
    resolution: Resolution = "720p"
    #: Each scene's on-screen line burned in.
    captions: StrictBool = True
    transitions: Transition = "crossfade"
    #: Where the end of the generation is POSTed, signed (see the gateway's callback rules).
    callback_url: Url | None = None
    #: Refuse the order when its estimate is higher than this.
    max_cost_usd: Annotated[float, Field(gt=0, le=100_000)] | None = None


class GenerationRequest(Input):
    """The body of ``POST /api/v1/generations`` and ``POST /api/v1/estimates``."""

    prompt: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
        _documented(TEXT_PATTERN),
        BeforeValidator(_no_control_chars),
    ]
    duration_seconds: DurationSeconds = 15
    aspect_ratio: AspectRatio = "16:9"
    brand: Brand | None = None
    options: Options = Field(default_factory=Options)


class SessionRequest(Input):
    """The body of ``POST /api/v1/session``: an API key traded for a browser session cookie."""

    api_key: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=512),
        _documented(NOT_BLANK_PATTERN),
    ]


class Links(BaseModel):
    self: str
    websocket: str


class GenerationCreated(BaseModel):
    generation_id: str
    status: GenerationStatus
    created_at: datetime
    links: Links


class Progress(BaseModel):
    stage: GenerationStatus
    percent: int = Field(ge=0, le=100)
    clips_total: int = 0
    clips_completed: int = 0
    clips_failed: int = 0


class VisualElement(BaseModel):
    name: str
    importance: float = Field(ge=0, le=1, description="0..1, how central the element is to the message")


class CallToAction(BaseModel):
    text: str
    placement: Literal["end", "overlay_end", "throughout"]


class BrandProfile(BaseModel):
    """The brand as the pipeline applies it: palette, typography and compliance rules."""

    name: str
    palette: list[str]
    typography: list[str]
    tagline: str | None
    avoid_words: list[str]
    required_disclaimer: str | None


class AnalysisResult(BaseModel):
    """What the analyzer (OpenAI or offline) says about the prompt; also the structured-output schema."""

    tone: str
    style: str
    narrative_structure: str
    target_audience: str
    key_themes: list[str]
    key_messages: list[str]
    visual_elements: list[VisualElement]
    color_mood: str
    pacing: Literal["slow", "moderate", "fast"]
    call_to_action: CallToAction


class Analysis(AnalysisResult):
    brand: BrandProfile | None = None
    source: Literal["openai", "offline"]
    fallback_reason: str | None = None


class Scene(BaseModel):
    scene_id: str
    kind: SceneKind
    start_seconds: float
    duration_seconds: float
    description: str


class Clip(BaseModel):
    clip_id: str
    scene_id: str
    index: int
    status: ClipStatus
    prediction_id: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    url: str | None = None
    duration_seconds: float
    attempts: int = 0


class Video(BaseModel):
    url: str
    duration_seconds: float
    width: int
    height: int
    #: Constant frame rate of the file (probed); None for videos made before it was recorded.
    fps: float | None = None
    #: Whether the file carries an audio track (AAC; silence until voice and music arrive).
    has_audio: bool | None = None
    thumbnail_url: str | None = None


class Compliance(BaseModel):
    """What the finished video does with the brand's rules (null in the detail until assembled)."""

    avoided_words_removed: list[str] = Field(default_factory=list)
    disclaimer_on_screen_seconds: float | None = None
    #: ``placed``, ``none`` (no logo_url), or why a given logo could not be used.
    logo: str = "none"
    #: The font the on-screen text was drawn with, and why when it is the shipped fallback.
    fonts: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    stage: str | None = None


class Cost(BaseModel):
    """The estimate at the configured model's price, and once clips are rendered what they cost."""

    estimated_usd: float | None = None
    actual_usd: float | None = None
    #: Provider compute (Replicate's ``metrics.predict_time``) summed over the clips; null until known.
    compute_seconds: float | None = None


CallbackEvent = Literal["generation.completed", "generation.failed", "generation.canceled"]


class CallbackInfo(BaseModel):
    """One outbound callback (``options.callback_url``) and how its delivery went."""

    event: CallbackEvent
    attempts: int
    #: HTTP status of the last try; null before the first or when the receiver did not answer.
    last_status: int | None = None
    delivered_at: datetime | None = None


class GenerationSummary(BaseModel):
    generation_id: str
    status: GenerationStatus
    prompt: str
    duration_seconds: int
    aspect_ratio: AspectRatio
    created_at: datetime
    updated_at: datetime
    thumbnail_url: str | None = None


class GenerationPage(BaseModel):
    items: list[GenerationSummary]
    next_cursor: str | None


class GenerationDetail(BaseModel):
    generation_id: str
    status: GenerationStatus
    prompt: str
    duration_seconds: int
    aspect_ratio: AspectRatio
    brand: Brand | None
    options: Options
    created_at: datetime
    updated_at: datetime
    progress: Progress
    analysis: Analysis | None = None
    scenes: list[Scene] | None = None
    clips: list[Clip] = Field(default_factory=list)
    video: Video | None = None
    compliance: Compliance | None = None
    error: ErrorInfo | None = None
    compute_seconds: float | None = None
    cost: Cost | None = None
    callbacks: list[CallbackInfo] = Field(default_factory=list)


class EstimateClip(BaseModel):
    clip_id: str
    scene_id: str
    index: int
    duration_seconds: float


class Estimate(BaseModel):
    duration_seconds: int
    aspect_ratio: AspectRatio
    model: str
    scenes: list[Scene]
    clips: list[EstimateClip]
    estimated_compute_seconds: float
    estimated_cost_usd: float


class FieldError(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[FieldError] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class SnapshotMessage(BaseModel):
    type: Literal["snapshot"] = "snapshot"
    generation: GenerationDetail


class StatusMessage(BaseModel):
    type: Literal["status"] = "status"
    generation_id: str
    status: GenerationStatus
    progress: Progress
    at: datetime


class ClipMessage(BaseModel):
    type: Literal["clip"] = "clip"
    generation_id: str
    clip: Clip
    at: datetime


def field_errors(errors: list[Any]) -> list[FieldError]:
    """pydantic errors → the contract's ``details``, one entry per bad field, named by dotted path."""
    out: list[FieldError] = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "body"
        out.append(FieldError(field=loc, message=str(err.get("msg", "invalid"))))
    return out


#: The finished video's size per aspect ratio and ``options.resolution`` (the contract's table).
DELIVERY_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("16:9", "480p"): (854, 480),
    ("16:9", "720p"): (1280, 720),
    ("16:9", "1080p"): (1920, 1080),
    ("9:16", "480p"): (480, 854),
    ("9:16", "720p"): (720, 1280),
    ("9:16", "1080p"): (1080, 1920),
    ("1:1", "480p"): (480, 480),
    ("1:1", "720p"): (720, 720),
    ("1:1", "1080p"): (1080, 1080),
}

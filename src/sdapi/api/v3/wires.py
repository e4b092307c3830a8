"""The route families of the API and what each one's answers look like (spec sections 2, 9, 10).

One set of handlers serves every family; a `Wire` says where its routes live and the details its
clients see: where `fetch_result` points, the processing message and tips, whether `model_id` is
required, and the v6 extras (`proxy_links`, `nsfw_content_detected`, `width`/`height` in meta).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sdapi.jobs import Task

V3_PROCESSING = "Try to fetch request after given estimated time"
V4_PROCESSING = "Try to fetch request after seconds estimated"
V3_TIP = "for faster speed, keep resolution upto 512x512"
BACKGROUND_TIP = "Your image is processing in background, you can get this image using fetch API"

#: text2img/img2img/inpaint under /api/v3 and /api/v6/*.
NAMED_TASKS: Mapping[Task, str] = MappingProxyType(
    {Task.TEXT2IMG: "/text2img", Task.IMG2IMG: "/img2img", Task.INPAINT: "/inpaint"}
)
#: Dreambooth: text2img is the family's root path.
DREAMBOOTH_TASKS: Mapping[Task, str] = MappingProxyType(
    {Task.TEXT2IMG: "", Task.IMG2IMG: "/img2img", Task.INPAINT: "/inpaint"}
)


@dataclass(frozen=True, slots=True)
class Wire:
    name: str
    prefix: str
    #: Task -> path below the prefix.
    tasks: Mapping[Task, str]
    #: Where `fetch_result` points (with the id appended).
    fetch_result: str
    #: Community-model families need `model_id`; an unknown one is "Model id not found".
    model_required: bool
    processing_message: str = V4_PROCESSING
    processing_tip: str = BACKGROUND_TIP
    #: v6 answers carry `proxy_links`, `nsfw_content_detected` and `tip_1`.
    v6: bool = False
    #: The meta keys for the image size: v3 writes W/H, v6 realtime width/height.
    size_keys: tuple[str, str] = ("W", "H")
    #: sdapi's own routes (cancel, jobs) and the v3-only ones (system_load) live under v3.
    extras: frozenset[str] = field(default_factory=frozenset)


V3 = Wire(
    "v3",
    "/api/v3",
    NAMED_TASKS,
    "/api/v3/fetch",
    model_required=False,
    processing_message=V3_PROCESSING,
    processing_tip=V3_TIP,
    extras=frozenset({"system_load", "jobs"}),
)
V3_DREAMBOOTH = Wire(
    "v3 dreambooth", "/api/v3/dreambooth", DREAMBOOTH_TASKS, "/api/v3/dreambooth/fetch", True
)
#: v4 jobs point their fetch_result at the v3 dreambooth fetch route, as the real API did.
V4_DREAMBOOTH = Wire(
    "v4 dreambooth",
    "/api/v4/dreambooth",
    DREAMBOOTH_TASKS,
    "/api/v3/dreambooth/fetch",
    True,
    extras=frozenset({"model_list", "model_reload"}),
)
V6_IMAGES = Wire("v6 images", "/api/v6/images", NAMED_TASKS, "/api/v6/images/fetch", True, v6=True)
V6_REALTIME = Wire(
    "v6 realtime",
    "/api/v6/realtime",
    NAMED_TASKS,
    "/api/v6/realtime/fetch",
    False,
    v6=True,
    size_keys=("width", "height"),
)

WIRES: tuple[Wire, ...] = (V3, V3_DREAMBOOTH, V4_DREAMBOOTH, V6_IMAGES, V6_REALTIME)

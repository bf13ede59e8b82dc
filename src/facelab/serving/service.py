"""HTTP service (FastAPI): verify, identify, enroll, delete, list, health, and a small web page.

Safety defaults, because a face gallery is personal data:

* writes (enroll, delete) need ``Authorization: Bearer <token>`` -- missing is 401, wrong is 403; a service started
  without a token refuses all writes;
* request bodies are capped (413) before they are parsed, also for chunked uploads without a Content-Length;
* uploads must be images of a few raster formats (415), checked by content, not just the declared type; images over
  the pixel cap are 413 before decoding, and the memory of concurrent decodes is bounded (:class:`DecodeBudget`);
* a request body that does not arrive within ``body_timeout`` seconds is 408 (a slow client cannot hold a worker);
* the Host header must be an IP literal or an allowed name (:class:`HostCheck`, against DNS rebinding);
* a gallery locked by another process answers 503 with Retry-After, and reads never wait behind writes;
* validation errors (422) never echo the input back; every JSON answer is strict (no bare NaN);
* ``/docs`` (Swagger UI, loaded from a CDN) is off unless ``docs=True``; ``/openapi.json`` is always served;
* ``facelab serve`` listens on 127.0.0.1 unless told otherwise.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the endpoint annotations at runtime, and they
# refer to objects local to create_app.
import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from importlib import resources
from typing import Annotated, Any, Literal

from facelab.errors import FacelabError
from facelab.images import ImageTooLarge, UnsupportedImage
from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION, Threshold
from facelab.serving.gallery import GalleryBusy, GalleryCorrupt, GalleryReadOnly, UnknownIdentity, check_name
from facelab.serving.guards import DecodeBudget, HostCheck, ServerBusy
from facelab.serving.images import ALLOWED_CONTENT_TYPES
from facelab.serving.recognition import FaceGallery
from facelab.utils.extras import require
from facelab.utils.strict_json import dumps_json
from facelab.version import __version__

require("fastapi", "serve")
require("python_multipart", "serve")  # FastAPI parses forms with it

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
MAX_FILES = 32
#: seconds a client has to send its whole request body (408 after)
DEFAULT_BODY_TIMEOUT = 30.0
#: Retry-After (seconds) sent with 503 answers
RETRY_AFTER = 2
#: write tokens shorter than this are accepted with a warning
MIN_TOKEN_LENGTH = 16
#: longest error text and upload name echoed back
MAX_DETAIL = 300
MAX_NAME_SHOWN = 100
#: FacelabError subclass -> HTTP status (anything else the user sent wrong is 422)
ERROR_STATUS: dict[type[FacelabError], int] = {
    UnsupportedImage: 415, ImageTooLarge: 413, UnknownIdentity: 404, GalleryBusy: 503, ServerBusy: 503,
    GalleryReadOnly: 403, GalleryCorrupt: 500,
}
#: undeclared types are allowed through to the content check, which has the final word
UNDECLARED_TYPES = frozenset({"", "application/octet-stream"})
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8")}
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


# -- response schemas (they make the OpenAPI document useful) -------------------------------------------------------
class MatchOut(BaseModel):
    name: str
    score: float = Field(description="cosine similarity of the face to this identity's closest enrolled image")


class FaceOut(BaseModel):
    box: list[float] = Field(description="x, y, width, height of the face in the photo's pixels (after EXIF "
                             "orientation)")
    method: str = Field(description="resized (pre-cropped model), aligned (detected + 5-point alignment) or "
                        "undetected (a face-sized image used as the crop)")
    detector_score: float | None


class IdentifyFaceOut(FaceOut):
    identity: str = Field(description="best identity at or above the threshold, or 'unknown'")
    known: bool
    matches: list[MatchOut] = Field(description="top-k identities at or above the threshold, best first")
    nearest: MatchOut | None = Field(description="closest identity even below the threshold (None: empty gallery)")
    threshold: float
    threshold_source: str


class IdentifyOut(BaseModel):
    faces: list[IdentifyFaceOut] = Field(description="one result per face found in the photo")


class VerifyOut(BaseModel):
    score: float
    threshold: float
    threshold_source: str
    same_person: bool
    identity: str | None = Field(None, description="the enrolled identity verified against, if one was given")
    faces: list[FaceOut] = Field(description="the face used from each photo")


class EnrollOut(BaseModel):
    name: str
    added: int
    images: int = Field(description="images now enrolled for this identity")
    duplicates: list[str] = Field(default_factory=list,
                                  description="uploads skipped: this identity already holds those exact bytes")


class IdentityOut(BaseModel):
    name: str
    images: int
    created: float


class DeleteOut(BaseModel):
    name: str
    removed_images: int


class ThresholdOut(BaseModel):
    value: float
    source: str = Field(description="why this threshold: calibrated at which FAR/FPIR on what, or given")
    target: float | None
    rate: str = Field(description="FAR (1:1) or FPIR (1:N)")


class HealthOut(BaseModel):
    status: str
    model_fingerprint: str
    model: str
    embedding_dim: int
    input_size: int
    align: str
    thresholds: dict[str, ThresholdOut | None] = Field(description="the thresholds in force: verification (1:1) "
                                                      "and identification (1:N)")
    identities: int
    images: int
    index: str
    writes_enabled: bool


class StrictJSONResponse(JSONResponse):
    """JSON answers as strict JSON: a non-finite number is ``null``, never a bare ``NaN`` (or a 500)."""

    def render(self, content: Any) -> bytes:
        return dumps_json(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes, by Content-Length or by counting streamed chunks; 408
    when the body has not fully arrived ``timeout`` seconds after the app started reading it.

    Once a streamed body runs over (or out of time), reading fails and whatever the app answers (FastAPI turns the
    failed form parse into a 400) is replaced by the 413 (408)."""

    class TooLarge(Exception):
        pass

    class TooSlow(Exception):
        pass

    def __init__(self, app: Any, limit: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, receive, send, 413)
        seen, failed, started, complete = 0, 0, False, False
        deadline: float | None = None

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen, failed, complete, deadline
            if complete:  # the body is in: later reads wait for a disconnect, with no deadline
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + self.timeout
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                failed = 408
                raise self.TooSlow from None
            seen += len(message.get("body", b""))
            if seen > self.limit:
                failed = 413
                raise self.TooLarge
            complete = message.get("type") != "http.request" or not message.get("more_body", False)
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if not failed:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not failed or started:
                raise
        if failed and not started:
            await self._reject(scope, receive, send, failed)

    async def _reject(self, scope: MutableMapping[str, Any], receive: Any, send: Any, status: int) -> None:
        detail = (f"request body over the {self.limit:,}-byte limit" if status == 413
                  else f"request body not received within {self.timeout:g} s")
        response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
        await response(scope, receive, send)


def create_app(gallery: FaceGallery, token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD, *,
               identification: Threshold | None = None, verification: Threshold | None = None,
               allowed_hosts: Sequence[str] = ("localhost",), max_pixels: int | None = None,
               decode_budget: DecodeBudget | None = None, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               docs: bool = False) -> FastAPI:
    """The service for one gallery and its model. ``identification`` / ``verification`` override the model's
    thresholds (``facelab serve --threshold / --target-fpir``); otherwise the model's calibrated ones are used, and
    a request that needs a missing one is a 422 that says how to calibrate.

    Guards: ``allowed_hosts`` are the Host names answered besides IP literals (``"*"``: any; :class:`HostCheck`);
    ``max_pixels`` the pixel cap of uploads (default :func:`facelab.images.max_pixels`); ``decode_budget`` the
    memory concurrent decodes may hold (default 1 GiB); ``body_timeout`` the seconds to receive a request body;
    ``docs`` serves Swagger UI at ``/docs`` (it loads scripts from a CDN)."""
    model = gallery.model
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        log.warning("the write token is %d characters long; use at least %d random ones (e.g. "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`)", len(token), MIN_TOKEN_LENGTH)
    budget = decode_budget or DecodeBudget()
    app = FastAPI(title="facelab", version=__version__,
                  description="Face verification (1:1) and identification (1:N) against an enrolled gallery. "
                  "Writes need a bearer token.", default_response_class=StrictJSONResponse,
                  docs_url="/docs" if docs else None, redoc_url=None)
    app.state.decode_budget = budget
    bearer = HTTPBearer(auto_error=False, description="the token given to `facelab serve`")
    forced = {IDENTIFICATION: identification, VERIFICATION: verification}

    def threshold(task: str) -> Threshold:
        return forced[task] or model.threshold(task)

    def require_token(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if creds is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if token is None:
            raise HTTPException(403, "writes are disabled: the service was started without a token")
        if not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(403, "invalid token")

    @app.exception_handler(FacelabError)
    async def facelab_error(_: Request, exc: FacelabError) -> JSONResponse:
        status = next((s for cls, s in ERROR_STATUS.items() if isinstance(exc, cls)), 422)
        headers = {"Retry-After": str(RETRY_AFTER)} if status == 503 else None
        return StrictJSONResponse({"detail": _shorten(str(exc), MAX_DETAIL)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's default 422 echoes every offending input back (a 100 KB name comes back whole): keep where and
        what, never the value."""
        errors = [{"loc": [str(x)[:MAX_NAME_SHOWN] for x in e.get("loc", ())], "msg": _shorten(str(e.get("msg")), 200),
                   "type": e.get("type")} for e in exc.errors()[:20]]
        return StrictJSONResponse({"detail": errors}, status_code=422)

    def guarded() -> Any:
        """Every decode of this request under the pixel cap and inside one decode-memory reservation."""
        return budget.limits(max_pixels)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def read(uploads: list[UploadFile]) -> list[tuple[str, bytes]]:
        """(name, bytes) of each upload after the declared-type check (the image gate checks the content)."""
        if not uploads or len(uploads) > MAX_FILES:
            raise FacelabError(f"send 1 to {MAX_FILES} images, got {len(uploads)}")
        out = []
        for up in uploads:
            name = _shorten(up.filename or "upload", MAX_NAME_SHOWN)
            declared = (up.content_type or "").split(";")[0].strip().lower()
            if declared not in ALLOWED_CONTENT_TYPES | UNDECLARED_TYPES:
                raise UnsupportedImage(f"{name}: content type {_shorten(declared, 60)!r} is not an accepted image "
                                       f"type")
            out.append((name, up.file.read(max_upload_bytes + 1)))
        return out

    def threshold_out(task: str) -> ThresholdOut | None:
        t = forced[task] or model.thresholds.get(task)
        return None if t is None else ThresholdOut(value=t.value, source=t.source, target=t.target,
                                                   rate=t.rate_name)

    @app.get("/health", response_model=HealthOut, tags=["service"])
    def health() -> HealthOut:
        ids, imgs = gallery.store.counts()
        return HealthOut(status="ok", model_fingerprint=model.fingerprint, model=model.ref or model.source,
                         embedding_dim=model.embedding_dim, input_size=model.spec.input_size, align=model.spec.align,
                         thresholds={VERIFICATION: threshold_out(VERIFICATION),
                                     IDENTIFICATION: threshold_out(IDENTIFICATION)},
                         identities=ids, images=imgs, index=gallery.store.index, writes_enabled=token is not None)

    @app.post("/verify", response_model=VerifyOut, tags=["recognition"])
    def verify(image_a: Annotated[UploadFile, File(description="a photo with the face to check")],
               image_b: Annotated[UploadFile | None, File(description="second photo (or give identity)")] = None,
               identity: Annotated[str | None, Form(max_length=256, description="enrolled identity to verify "
                                                    "image_a against (instead of image_b)")] = None,
               scorer: Annotated[Literal["cosine", "deepface"], Form(description="cosine (default), or deepface: "
                                 "the bundle's chi-square + SVM verifier (two photos only)")] = "cosine"
               ) -> VerifyOut:
        """1:1 -- are these two faces the same person? Or, with ``identity``, is this face that enrolled person?"""
        t = threshold(VERIFICATION)
        if (image_b is None) == (identity is None):
            raise FacelabError("give either image_b or identity")
        if scorer != "cosine":
            if identity is not None:
                raise FacelabError(f"scorer {scorer} compares two photos; identity uses the cosine threshold")
            model.require_verifier(scorer)  # before reading any upload
        if identity is not None:
            ((name, data),) = read([image_a])
            with guarded():
                r = gallery.verify((name, data), identity, threshold=t.value, image_name=name)
            return VerifyOut(score=r.score, threshold=t.value, threshold_source=t.source,
                             same_person=r.same_person, identity=r.name, faces=[FaceOut(**r.face.face_dict())])
        (na, da), (nb, db) = read([image_a, image_b])  # type: ignore[list-item]
        with guarded():
            if scorer != "cosine":
                v = model.verify((na, da), (nb, db), scorer=scorer)
                value, source = v.threshold, v.threshold_source
            else:
                v = model.verify((na, da), (nb, db), threshold=t.value)
                value, source = t.value, t.source
        return VerifyOut(score=v.score, threshold=value, threshold_source=source, same_person=v.same_person,
                         faces=[FaceOut(**f.face_dict()) for f in v.faces])

    @app.post("/identify", response_model=IdentifyOut, tags=["recognition"])
    def identify(image: Annotated[UploadFile, File(description="photo to look up (every face is identified)")],
                 k: Annotated[int, Form(ge=1, le=100, description="how many identities to return per face")] = 5
                 ) -> IdentifyOut:
        """1:N -- who in the gallery is each face? 'unknown' when no identity reaches the 1:N threshold."""
        t = threshold(IDENTIFICATION)
        ((name, data),) = read([image])
        with guarded():
            results = gallery.identify((name, data), k, threshold=t.value, name=name)
        return IdentifyOut(faces=[IdentifyFaceOut(**{**r.to_dict(), "threshold_source": t.source})
                                  for r in results])

    @app.post("/enroll", response_model=EnrollOut, tags=["gallery"], dependencies=[Depends(require_token)])
    def enroll(name: Annotated[str, Form(min_length=1, max_length=128, description="identity name")],
               images: Annotated[list[UploadFile], File(description="one or more photos of this person")]
               ) -> EnrollOut:
        """Add photos to an identity (created if new), all in one transaction; a photo without a face is refused."""
        check_name(name)  # a bad name is refused before anything is decoded
        files = read(images)
        with guarded():
            r = gallery.enroll(name, files, names=[n for n, _ in files])
        return EnrollOut(name=r.name, added=r.added, images=r.images, duplicates=[p for p, _ in r.duplicates])

    @app.delete("/identities/{name:path}", response_model=DeleteOut, tags=["gallery"],
                dependencies=[Depends(require_token)])
    def delete(name: str) -> DeleteOut:
        """Remove an identity with all its images and embeddings. Any name can be removed, '/' included
        (percent-encode it: ``/identities/a%2Fb``)."""
        return DeleteOut(name=name, removed_images=gallery.remove(name))

    @app.get("/identities", response_model=list[IdentityOut], tags=["gallery"])
    def list_identities() -> list[IdentityOut]:
        return [IdentityOut(**i.__dict__) for i in gallery.identities()]

    def static_route(filename: str, media_type: str) -> Callable[[], Response]:
        body = resources.files("facelab.serving").joinpath("static", filename).read_bytes()
        return lambda: Response(body, media_type=media_type, headers={"Content-Security-Policy": PAGE_CSP})

    for route, (filename, media_type) in STATIC.items():
        app.add_api_route(route, static_route(filename, media_type), methods=["GET"], include_in_schema=False)

    app.add_middleware(BodyLimit, limit=max_upload_bytes, timeout=body_timeout)  # before anything parses
    app.add_middleware(HostCheck, allowed=allowed_hosts)  # added last = outermost: first of all
    return app


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""HTTP service (FastAPI): verify, identify, enroll, delete, list, health, and a small web page.

Safety defaults, because a face gallery is personal data:

* writes (enroll, delete) need ``Authorization: Bearer <token>`` -- missing is 401, wrong is 403; a service started
  without a token refuses all writes;
* request bodies are capped (413) before they are parsed, also for chunked uploads without a Content-Length;
* uploads must be images of a few raster formats (415), checked by content, not just the declared type;
* ``facelab serve`` listens on 127.0.0.1 unless told otherwise.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the endpoint annotations at runtime, and they
# refer to objects local to create_app.
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Annotated, Any

from facelab.errors import FacelabError
from facelab.images import ImageTooLarge, UnsupportedImage, read_image
from facelab.serving.bundle import Bundle
from facelab.serving.gallery import Gallery, UnknownIdentity
from facelab.serving.images import ALLOWED_CONTENT_TYPES
from facelab.utils.extras import require

require("fastapi", "serve")
require("python_multipart", "serve")  # FastAPI parses forms with it

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
MAX_FILES = 32
#: FacelabError subclass -> HTTP status (anything else the user sent wrong is 422)
ERROR_STATUS: dict[type[FacelabError], int] = {UnsupportedImage: 415, ImageTooLarge: 413, UnknownIdentity: 404}
#: undeclared types are allowed through to the content check, which has the final word
UNDECLARED_TYPES = frozenset({"", "application/octet-stream"})
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8")}
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


# -- response schemas (they make the OpenAPI document useful) -------------------------------------------------------
class MatchOut(BaseModel):
    name: str
    score: float = Field(description="cosine similarity of the query to this identity's closest enrolled image")


class IdentifyOut(BaseModel):
    identity: str = Field(description="best identity at or above the threshold, or 'unknown'")
    known: bool
    threshold: float
    matches: list[MatchOut] = Field(description="top-k identities at or above the threshold, best first")
    nearest: MatchOut | None = Field(description="closest identity even below the threshold (None: empty gallery)")


class VerifyOut(BaseModel):
    score: float
    threshold: float
    same_person: bool


class EnrollOut(BaseModel):
    name: str
    added: int
    images: int = Field(description="images now enrolled for this identity")


class IdentityOut(BaseModel):
    name: str
    images: int
    created: float


class DeleteOut(BaseModel):
    name: str
    removed_images: int


class HealthOut(BaseModel):
    status: str
    model_fingerprint: str
    embedding_dim: int
    input_size: int
    threshold: float
    identities: int
    images: int
    index: str
    writes_enabled: bool


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes, by Content-Length or by counting streamed chunks.

    Once a streamed body runs over, reading fails and whatever the app answers (FastAPI turns the failed form parse
    into a 400) is replaced by the 413."""

    class TooLarge(Exception):
        pass

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, receive, send)
        seen, over, started = 0, False, False

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                over = True
                raise self.TooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if not over:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        response = JSONResponse({"detail": f"request body over the {self.limit:,}-byte limit"}, status_code=413,
                                headers={"Connection": "close"})
        await response(scope, receive, send)


def create_app(bundle: Bundle, gallery: Gallery, token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD) -> FastAPI:
    """The service for one bundle and one gallery (opened with that bundle's fingerprint)."""
    if gallery.fingerprint != bundle.fingerprint:
        raise FacelabError("the gallery was opened for another model than the bundle served")
    app = FastAPI(title="facelab", version=__import__("facelab").__version__,
                  description="Face verification (1:1) and identification (1:N) against an enrolled gallery. "
                  "Writes need a bearer token.")
    bearer = HTTPBearer(auto_error=False, description="the token given to `facelab serve`")
    threshold = bundle.threshold

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
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def embed(uploads: list[UploadFile]) -> Any:
        """Decode and embed all uploads, or fail on the first bad one (so a request is all-or-nothing)."""
        if not uploads or len(uploads) > MAX_FILES:
            raise FacelabError(f"send 1 to {MAX_FILES} images, got {len(uploads)}")
        images = []
        for up in uploads:
            name = up.filename or "upload"
            declared = (up.content_type or "").split(";")[0].strip().lower()
            if declared not in ALLOWED_CONTENT_TYPES | UNDECLARED_TYPES:
                raise UnsupportedImage(f"{name}: content type {declared!r} is not an accepted image type")
            images.append(read_image(up.file.read(max_upload_bytes + 1), name))
        return bundle.embed_images(images)

    @app.get("/health", response_model=HealthOut, tags=["service"])
    def health() -> HealthOut:
        ids, imgs = gallery.counts()
        return HealthOut(status="ok", model_fingerprint=bundle.fingerprint, embedding_dim=bundle.meta.embedding_dim,
                         input_size=bundle.meta.input_size, threshold=threshold, identities=ids, images=imgs,
                         index=gallery.index, writes_enabled=token is not None)

    @app.post("/verify", response_model=VerifyOut, tags=["recognition"])
    def verify(image_a: Annotated[UploadFile, File(description="first face")],
               image_b: Annotated[UploadFile, File(description="second face")]) -> VerifyOut:
        """1:1 -- are these two faces the same person?"""
        a, b = embed([image_a, image_b])
        score = bundle.score(a, b)
        return VerifyOut(score=score, threshold=threshold, same_person=score >= threshold)

    @app.post("/identify", response_model=IdentifyOut, tags=["recognition"])
    def identify(image: Annotated[UploadFile, File(description="face to look up")],
                 k: Annotated[int, Form(ge=1, le=100, description="how many identities to return")] = 5
                 ) -> IdentifyOut:
        """1:N -- who in the gallery is this? 'unknown' when no identity reaches the threshold."""
        (query,) = embed([image])
        return IdentifyOut(**gallery.identify(query, threshold, k).to_dict())

    @app.post("/enroll", response_model=EnrollOut, tags=["gallery"], dependencies=[Depends(require_token)])
    def enroll(name: Annotated[str, Form(min_length=1, max_length=128, description="identity name")],
               images: Annotated[list[UploadFile], File(description="one or more photos of this person")]
               ) -> EnrollOut:
        """Add photos to an identity (created if new), all in one transaction."""
        vectors = embed(images)
        added = gallery.enroll(name, [(up.filename or "upload", v) for up, v in zip(images, vectors, strict=True)])
        total = next(i.images for i in gallery.identities() if i.name == name.strip())
        return EnrollOut(name=name.strip(), added=added, images=total)

    @app.delete("/identities/{name}", response_model=DeleteOut, tags=["gallery"],
                dependencies=[Depends(require_token)])
    def delete(name: str) -> DeleteOut:
        """Remove an identity with all its images and embeddings."""
        return DeleteOut(name=name, removed_images=gallery.remove(name))

    @app.get("/identities", response_model=list[IdentityOut], tags=["gallery"])
    def list_identities() -> list[IdentityOut]:
        return [IdentityOut(**i.__dict__) for i in gallery.identities()]

    def static_route(filename: str, media_type: str) -> Callable[[], Response]:
        body = resources.files("facelab.serving").joinpath("static", filename).read_bytes()
        return lambda: Response(body, media_type=media_type, headers={"Content-Security-Policy": PAGE_CSP})

    for route, (filename, media_type) in STATIC.items():
        app.add_api_route(route, static_route(filename, media_type), methods=["GET"], include_in_schema=False)

    app.add_middleware(BodyLimit, limit=max_upload_bytes)  # added last = outermost: runs before anything parses
    return app

"""Uploaded images: upload, list, read, delete.

``POST /api/v1/images`` takes the image itself as the body (``curl --data-binary @logo.png
-H 'Content-Type: image/png'``), optionally ``?name=logo-bio``; the server keeps a PNG of its
own making, named by its SHA-256, and answers with ``src`` (``sha256:<digest>``), which an
``<image src>`` or a product's ``image`` may name, as may the name. Uploading and deleting
need the ``merchandiser`` role (or ``admin``) and are audited; every token may list and read.
The checks on the bytes themselves (size declared before decoding, format, damage) are
`render.image_decode`'s; what a refusal says names the field (``body``, ``name``).
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from eslserver.api.errors import ApiError, bad_input, conflict, not_found
from eslserver.api.routing import ANY_ROLE, Call, Route, json_response, page_params, read_body
from eslserver.uploads import UploadConflict, parse_name
from render.image_decode import MEDIA_TYPES, UploadError
from render.image_refs import DIGEST_PATTERN, NAME_PATTERN

__all__ = ["ROUTES", "IMAGE_ROLES", "MAX_UPLOAD_BYTES", "DIGEST_PATTERN", "NAME_PATTERN"]

IMAGE_ROLES: Final = frozenset({"merchandiser"})
MAX_UPLOAD_BYTES: Final = 4 * 1024 * 1024
"""Largest upload body (the pixel limits of `render.image_decode` apply besides)."""
_DIGEST_RE: Final = re.compile(DIGEST_PATTERN)


def _digest(call: Call) -> str:
    digest = call.request.match_info["digest"]
    if not _DIGEST_RE.fullmatch(digest):
        raise bad_input("digest", digest, "the image's SHA-256 as 64 lower-case hex digits")
    return digest


def _name(call: Call) -> str | None:
    values = call.request.query.getall("name", [])
    if not values:
        return None
    if len(values) > 1:
        raise bad_input("name", values, "one value")
    try:
        return parse_name(values[0])
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", str(exc), field="name") from None


async def upload_image(call: Call) -> web.StreamResponse:
    name = _name(call)
    media, body = await read_body(call.request, MAX_UPLOAD_BYTES, tuple(MEDIA_TYPES))
    try:
        image, created = await call.server.uploads.upload(body, media, name, actor=call.who)
    except UploadError as exc:
        raise ApiError(422, exc.code, exc.reason, field="body") from None
    except UploadConflict as exc:
        raise conflict(exc.code, exc.detail, field="name") from None
    return json_response(image.to_json(), status=201 if created else 200)


async def list_images(call: Call) -> web.StreamResponse:
    limit, offset = page_params(call.request, default=100, maximum=1000)
    total, images = await call.server.uploads.page(limit, offset)
    return json_response({"items": [i.to_json() for i in images], "total": total, "limit": limit,
                          "offset": offset})


async def get_image(call: Call) -> web.StreamResponse:
    digest = _digest(call)
    png = await call.server.uploads.png(digest)
    if png is None:
        raise not_found("unknown_image", f"digest: no uploaded image sha256:{digest}", field="digest")
    # the bytes under a digest never change: a browser may keep them
    return web.Response(body=png, content_type="image/png",
                        headers={"Cache-Control": "private, max-age=31536000, immutable", "ETag": f'"{digest}"'})


async def delete_image(call: Call) -> web.StreamResponse:
    digest = _digest(call)
    image = await call.server.uploads.delete(digest, actor=call.who)
    if image is None:
        raise not_found("unknown_image", f"digest: no uploaded image sha256:{digest}", field="digest")
    return json_response(image.to_json())


ROUTES: Final = (
    Route("POST", "/api/v1/images", upload_image, IMAGE_ROLES, body_limit=MAX_UPLOAD_BYTES),
    Route("GET", "/api/v1/images", list_images, ANY_ROLE),
    Route("GET", "/api/v1/images/{digest}", get_image, ANY_ROLE),
    Route("DELETE", "/api/v1/images/{digest}", delete_image, IMAGE_ROLES),
)

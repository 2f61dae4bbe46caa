"""Building the stack's four images from stack/docker/images/*.Dockerfile.

Each image is tagged with a hash of exactly what goes into it (its build context,
the base image's id and the build arguments), plus `latest`. A DockerStack builds
an image only when no image carries the current hash, so an unchanged checkout
never rebuilds, and a changed app module rebuilds only the app image (and, thanks
to the layer cache, only its last layer).

The build context is the `stack/` directory, as compose.yml's `build:` sections
say; for speed each image gets only the files it copies, plus any extra CA
certificates (SCALELAB_DOCKER_CA_CERTS, a glob; default
/usr/local/share/ca-certificates/*.crt) under docker/images/certs/.

The base image is named by the BASE_IMAGE build argument:
SCALELAB_DOCKER_BASE_IMAGE if set; else debian:bookworm-slim if the engine has it;
else scalelab/debian-base:bookworm if the engine has that (made offline with
debootstrap + docker import, see stack/scripts/docker-tier.sh); else
debian:bookworm-slim, pulled.
"""
from __future__ import annotations

import glob
import hashlib
import io
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import StackError
from .compose import DEFAULT_BASE_IMAGE, IMAGES

STACK_DIR = Path(__file__).resolve().parents[1]          # the `stack` package = the build context
IMAGES_DIR = STACK_DIR / "docker" / "images"
LOCAL_BASE_IMAGE = "scalelab/debian-base:bookworm"
DEFAULT_CA_GLOB = "/usr/local/share/ca-certificates/*.crt"
# What the app image needs of the package (its Dockerfile copies the whole context): every
# top-level module (a hand-kept list missed fault.py, then shardmap.py, and the image could not
# import `stack`), the app and the renderers; tests/test_docker_render.py imports the app from
# exactly these files.
APP_FILES = tuple(sorted(p.name for p in STACK_DIR.glob("*.py"))) + (
    "app", "render", "docker/__init__.py", "docker/config.py", "docker/runtime.py")


class ImageBuildError(StackError):
    """An image could not be built."""


def _files_for(kind: str) -> list[tuple[str, Path]]:
    """(path in the context, file on disk) for one image, sorted."""
    files: dict[str, Path] = {}

    def add(rel: str) -> None:
        path = STACK_DIR / rel
        if path.is_dir():
            for sub in sorted(path.rglob("*")):
                if sub.is_file() and "__pycache__" not in sub.parts and sub.suffix != ".pyc":
                    files[str(sub.relative_to(STACK_DIR))] = sub
        elif path.is_file():
            files[rel] = path

    add(f"docker/images/{kind}.Dockerfile")
    add("docker/images/scripts")
    add("docker/images/certs")
    if kind == "app":
        add("docker/images/app-requirements.txt")
        for rel in APP_FILES:
            add(rel)
    return sorted(files.items())


def extra_ca_certs() -> list[Path]:
    pattern = os.environ.get("SCALELAB_DOCKER_CA_CERTS", DEFAULT_CA_GLOB)
    return [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_file()] if pattern else []


def build_context(kind: str) -> tuple[bytes, str]:
    """(a tar of the build context, its content hash)."""
    digest = hashlib.sha256(kind.encode())
    buffer = io.BytesIO()
    entries = _files_for(kind) + [(f"docker/images/certs/{p.name}", p) for p in extra_ca_certs()]
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel, path in entries:
            data = path.read_bytes()
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
            digest.update(f"{rel}\0{mode}\0{len(data)}\0".encode())
            digest.update(data)
    return buffer.getvalue(), digest.hexdigest()


def choose_base_image(client) -> str:
    from docker.errors import ImageNotFound
    explicit = os.environ.get("SCALELAB_DOCKER_BASE_IMAGE")
    if explicit:
        return explicit
    for candidate in (DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE):
        try:
            client.images.get(candidate)
            return candidate
        except ImageNotFound:
            continue
    return DEFAULT_BASE_IMAGE


def _ensure_base(client, base: str) -> str:
    """The base image's id, pulling it if needed; a clear error when that is impossible."""
    from docker.errors import DockerException, ImageNotFound
    try:
        return client.images.get(base).id
    except ImageNotFound:
        pass
    try:
        repo, _, tag = base.partition(":")
        return client.images.pull(repo, tag=tag or "latest").id
    except DockerException as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ImageBuildError(
            f"base image {base} is not on this engine and could not be pulled ({reason}). "
            f"Where no registry is reachable, make a Debian bookworm base locally: "
            f"`bash stack/scripts/docker-tier.sh base-image` (debootstrap + docker import, tags "
            f"{LOCAL_BASE_IMAGE}), or set SCALELAB_DOCKER_BASE_IMAGE to a Debian bookworm image "
            f"this engine has.") from None


def wanted_images(client) -> tuple[dict[str, str], dict[str, tuple[bytes, str]], str]:
    """(image reference by kind, build inputs by kind, base image) for the current sources."""
    base = choose_base_image(client)
    base_id = _ensure_base(client, base)
    refs, inputs = {}, {}
    for kind in IMAGES:
        context, digest = build_context(kind)
        tag = hashlib.sha256(f"{digest}\0{base_id}".encode()).hexdigest()[:12]
        refs[kind] = f"scalelab/{kind}:{tag}"
        inputs[kind] = (context, base)
    return refs, inputs, base


def _build_one(kind: str, ref: str, context: bytes, base: str, say) -> float:
    """Build one image (in its own client: the SDK's session is not meant for threads)."""
    from .engine import connect
    client = connect(timeout=900)
    started = time.monotonic()
    log: list[str] = []
    network = os.environ.get("SCALELAB_DOCKER_BUILD_NETWORK", "host")
    try:
        stream = client.api.build(fileobj=io.BytesIO(context), custom_context=True,
                                  dockerfile=f"docker/images/{kind}.Dockerfile", tag=ref, rm=True,
                                  forcerm=True, buildargs={"BASE_IMAGE": base}, decode=True,
                                  network_mode=network or None, labels={"scalelab.image": kind})
        for chunk in stream:
            if "stream" in chunk:
                log.append(chunk["stream"])
            if "error" in chunk:
                tail = "".join(log[-30:])
                raise ImageBuildError(f"building {ref} failed: {chunk['error'].strip()}\n{tail}")
        client.images.get(ref).tag(f"scalelab/{kind}", "latest")
    finally:
        client.close()
    elapsed = time.monotonic() - started
    say(f"built {ref} in {elapsed:.1f}s")
    return elapsed


def ensure_images(client, say=lambda _m: None, force: bool = False) -> dict[str, str]:
    """Build whichever of the four images is missing for the current sources; returns refs."""
    from docker.errors import ImageNotFound
    refs, inputs, base = wanted_images(client)
    missing = []
    for kind, ref in refs.items():
        try:
            client.images.get(ref)
        except ImageNotFound:
            missing.append(kind)
    if force:
        missing = list(refs)
    if missing:
        say(f"building images {', '.join(missing)} on {base} (first time: about a minute)")
        with ThreadPoolExecutor(max_workers=len(missing)) as pool:
            futures = [pool.submit(_build_one, kind, refs[kind], inputs[kind][0], base, say) for kind in missing]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
    return refs

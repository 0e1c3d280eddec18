"""Upload a built dataset folder to the Hugging Face Hub: plan against the remote, commit only what changed.

huggingface_hub already (a) skips files whose remote oid equals the local one inside `create_commit`, and
(b) retries transient errors with backoff on LFS/Xet transfers and paginated listings (`http_backoff`: 408, 429,
5xx, timeouts, network errors). It does not retry `create_repo` or the commit POST itself, and it never deletes
shards a smaller re-publish no longer writes (they would still match the `data/<lang>/train-*` globs). So compass
plans the commit itself -- changed files in, stale `data/` files out, nothing at all when nothing changed -- and
retries whole idempotent steps on transient errors.

`HubClient` is the seam: `HfHubClient` is the real one over `HfApi`; tests pass their own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from compass.errors import CompassError

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
MANAGED_PREFIXES = ("data/",)  # remote paths compass owns: stale files here are deleted


@dataclass(frozen=True)
class LocalFile:
    path: str       # relative, posix
    size: int
    sha256: str     # the oid of an LFS file
    git_sha1: str   # the oid of a regular (non-LFS) file: git blob hash


@dataclass(frozen=True)
class RemoteFile:
    path: str
    blob_id: str                 # git blob oid (of the LFS pointer, for LFS files)
    lfs_sha256: str | None = None


@dataclass
class UploadPlan:
    add: list[str] = field(default_factory=list)        # new or changed
    unchanged: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)     # remote files under data/ the folder no longer has

    @property
    def empty(self) -> bool:
        return not self.add and not self.delete


def git_blob_sha1(data: bytes) -> str:
    # The id git (and the Hub, for non-LFS files) gives a blob; huggingface_hub.utils.sha.git_hash is the same.
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def local_files(folder: str | Path) -> dict[str, LocalFile]:
    from compass.publish_folder import MARKER

    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        # The manifest is local bookkeeping (which files compass may remove), not part of the dataset.
        if p.is_file() and ".git" not in p.relative_to(folder).parts and p.name != MARKER:
            data = p.read_bytes()
            rel = p.relative_to(folder).as_posix()
            out[rel] = LocalFile(rel, len(data), hashlib.sha256(data).hexdigest(), git_blob_sha1(data))
    return out


def same_content(local: LocalFile, remote: RemoteFile) -> bool:
    if remote.lfs_sha256:
        return remote.lfs_sha256 == local.sha256
    return remote.blob_id == local.git_sha1


def plan_upload(local: dict[str, LocalFile], remote: dict[str, RemoteFile]) -> UploadPlan:
    """Which local files to upload and which remote `data/` files to delete, by content hash."""
    plan = UploadPlan()
    for path, lf in sorted(local.items()):
        rf = remote.get(path)
        (plan.unchanged if rf is not None and same_content(lf, rf) else plan.add).append(path)
    plan.delete = sorted(p for p in remote if p not in local and p.startswith(MANAGED_PREFIXES))
    return plan


def is_transient(err: BaseException) -> bool:
    """5xx / 429 / 408 answers and connection-level failures: worth another try."""
    resp = getattr(err, "response", None)
    status = getattr(resp, "status_code", None)
    if status is not None:
        return status in TRANSIENT_STATUS
    if type(err).__name__ == "OfflineModeIsEnabled":  # a ConnectionError, but no retry will change it
        return False
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    try:  # huggingface_hub's HTTP client (httpx2 in 1.x/2.x); its transport errors cover timeouts and resets
        import httpx2
        return isinstance(err, httpx2.TransportError)
    except ImportError:  # pragma: no cover - older huggingface_hub on httpx/requests
        return type(err).__name__ in {"ConnectError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError"}


def with_retries(fn: Callable[[], T], what: str, attempts: int = 5, base_delay: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run an idempotent step, retrying transient errors with exponential backoff (2, 4, 8, 16 s)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e) or i == attempts - 1:
                raise
            delay = base_delay * 2 ** i
            log.warning("%s: transient error (%s); retry %d/%d in %.0fs", what, type(e).__name__, i + 1,
                        attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")


class HubClient(Protocol):
    def create_repo(self, repo_id: str, private: bool) -> None: ...
    def remote_files(self, repo_id: str) -> dict[str, RemoteFile]: ...
    def commit(self, repo_id: str, folder: Path, plan: UploadPlan, create_pr: bool, message: str) -> str | None: ...


class HfHubClient:
    """The real Hub, through huggingface_hub.HfApi; the token comes from $HF_TOKEN (or the saved login)."""

    def __init__(self, token: str | None = None):
        from huggingface_hub import HfApi

        self.api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)

    def create_repo(self, repo_id: str, private: bool) -> None:
        self.api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)

    def remote_files(self, repo_id: str) -> dict[str, RemoteFile]:
        from huggingface_hub.hf_api import RepoFile

        out = {}
        for item in self.api.list_repo_tree(repo_id, repo_type="dataset", recursive=True):
            if isinstance(item, RepoFile):
                out[item.path] = RemoteFile(item.path, item.blob_id, item.lfs.sha256 if item.lfs else None)
        return out

    def commit(self, repo_id: str, folder: Path, plan: UploadPlan, create_pr: bool, message: str) -> str | None:
        # create_commit with the planned operations, not upload_folder(allow_patterns=...): the plan names exact
        # files, and a deletion-only commit is possible. Same upload machinery (LFS/Xet, preupload) underneath.
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(folder / p)) for p in plan.add]
        ops += [CommitOperationDelete(path_in_repo=p) for p in plan.delete]
        info = self.api.create_commit(repo_id, ops, repo_type="dataset", commit_message=message,
                                      create_pr=create_pr)
        return info.pr_url or info.commit_url


@dataclass
class UploadResult:
    plan: UploadPlan
    url: str | None


def upload_folder(folder: str | Path, repo_id: str, client: HubClient, *, private: bool = False,
                  create_pr: bool = False, message: str = "Publish dataset with compass",
                  sleep: Callable[[float], None] = time.sleep) -> UploadResult:
    """Create the dataset repo if needed and commit the folder's changes; nothing when nothing changed."""
    folder = Path(folder)
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CompassError(f"repo id {repo_id!r}: use OWNER/NAME, e.g. my-org/compass-sea-pairs")
    try:
        with_retries(lambda: client.create_repo(repo_id, private), "create_repo", sleep=sleep)
        remote = with_retries(lambda: client.remote_files(repo_id), "list_repo_tree", sleep=sleep)
        plan = plan_upload(local_files(folder), remote)
        if plan.empty:
            return UploadResult(plan, None)
        # Re-running a commit after a transient failure is safe: files already on the remote are skipped.
        url = with_retries(lambda: client.commit(repo_id, folder, plan, create_pr, message), "commit", sleep=sleep)
    except CompassError:
        raise
    except Exception as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {401: ": set HF_TOKEN to a token with write access", 403: ": the token cannot write to this repo "
                "(check its scope and the repo owner)", 404: ": the repo or owner does not exist"}.get(status, "")
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if type(e).__name__ == "OfflineModeIsEnabled":
            hint = " (HF_HUB_OFFLINE is set: unset it to upload, or write the folder with --to-dir)"
        raise CompassError(f"upload to {repo_id} failed: {first}{hint}") from None
    return UploadResult(plan, url)

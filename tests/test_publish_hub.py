"""The upload side of `compass publish`, offline: the planner against remote listings, the HfApi seam with real
huggingface_hub objects (RepoFile, CommitOperationAdd/Delete, CommitInfo, HfHubHTTPError), retries on
transient errors only, and a re-publish of an unchanged folder committing nothing.

Not tested here (needs the network): the real Hub's answers to create_repo / list_repo_tree / create_commit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import CommitInfo, RepoFile, RepoFolder
from huggingface_hub.utils.sha import git_hash
from typer.testing import CliRunner

from compass.cli import app
from compass.errors import CompassError
from compass.publish_hub import (
    HfHubClient,
    RemoteFile,
    UploadPlan,
    git_blob_sha1,
    is_transient,
    local_files,
    plan_upload,
    upload_folder,
    with_retries,
)


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def remote_like_hub(folder: Path) -> dict[str, RemoteFile]:
    """What the Hub lists after a push: parquet as LFS (sha256 oid), the rest as git blobs."""
    out = {}
    for rel, lf in local_files(folder).items():
        if rel.endswith(".parquet"):
            out[rel] = RemoteFile(rel, blob_id="pointer-oid-" + rel, lfs_sha256=lf.sha256)
        else:
            out[rel] = RemoteFile(rel, blob_id=lf.git_sha1)
    return out


def http_error(status: int) -> HfHubHTTPError:
    req = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} error", response=httpx2.Response(status, request=req))


class FakeHub:
    """A HubClient whose remote is a dict; `commit` applies the plan like the Hub would."""

    def __init__(self, fail: list[BaseException] | None = None):
        self.remote: dict[str, RemoteFile] = {".gitattributes": RemoteFile(".gitattributes", "ga")}
        self.commits: list[tuple[UploadPlan, bool]] = []
        self.created: list[tuple[str, bool]] = []
        self.fail = list(fail or [])

    def create_repo(self, repo_id, private):
        if self.fail:
            raise self.fail.pop(0)
        self.created.append((repo_id, private))

    def remote_files(self, repo_id):
        return dict(self.remote)

    def commit(self, repo_id, folder, plan, create_pr, message):
        self.commits.append((plan, create_pr))
        after = remote_like_hub(folder)
        for p in plan.add:
            self.remote[p] = after[p]
        for p in plan.delete:
            del self.remote[p]
        return f"https://huggingface.co/datasets/{repo_id}/commit/abc"


def test_git_blob_sha1_matches_huggingface_hub():
    for data in [b"", b"hello\n", "ภาษาไทย".encode() * 1000]:
        assert git_blob_sha1(data) == git_hash(data)


def test_plan_upload_by_content_hash(tmp_path):
    folder = make_folder(tmp_path / "f", {
        "README.md": b"card v2", "compass_provenance.json": b"{}",
        "data/th/train-00000-of-00001.parquet": b"th rows", "data/vi/train-00000-of-00001.parquet": b"vi rows v2"})
    local = local_files(folder)
    remote = remote_like_hub(folder)
    remote["README.md"] = RemoteFile("README.md", blob_id=git_hash(b"card v1"))              # changed, regular
    remote["data/vi/train-00000-of-00001.parquet"] = RemoteFile(                             # changed, LFS
        "data/vi/train-00000-of-00001.parquet", "x", hashlib.sha256(b"vi rows v1").hexdigest())
    remote["data/th/train-00000-of-00002.parquet"] = RemoteFile("data/th/train-00000-of-00002.parquet", "y", "z")
    remote["data/km/train-00000-of-00001.parquet"] = RemoteFile("data/km/train-00000-of-00001.parquet", "y", "z")
    remote["notes.md"] = RemoteFile("notes.md", "user-file")                                  # not ours: kept
    remote[".gitattributes"] = RemoteFile(".gitattributes", "ga")
    plan = plan_upload(local, remote)
    assert plan.add == ["README.md", "data/vi/train-00000-of-00001.parquet"]
    assert plan.unchanged == ["compass_provenance.json", "data/th/train-00000-of-00001.parquet"]
    assert plan.delete == ["data/km/train-00000-of-00001.parquet", "data/th/train-00000-of-00002.parquet"]
    assert plan_upload(local, remote_like_hub(folder)).empty


def test_publish_twice_uploads_nothing_the_second_time(tmp_path):
    folder = make_folder(tmp_path / "f", {"README.md": b"card", "data/th/train-00000-of-00002.parquet": b"a",
                                          "data/th/train-00001-of-00002.parquet": b"b"})
    hub = FakeHub()
    first = upload_folder(folder, "me/ds", hub, private=True, sleep=lambda s: None)
    assert hub.created == [("me/ds", True)]
    assert first.plan.add == sorted(local_files(folder)) and first.url.endswith("/commit/abc")
    again = upload_folder(folder, "me/ds", hub, sleep=lambda s: None)
    assert again.plan.empty and again.url is None and len(hub.commits) == 1
    # the catalog shrank: one shard now; the stale second shard is deleted, the card re-uploaded
    for p in (folder / "data" / "th").iterdir():
        p.unlink()
    make_folder(folder, {"README.md": b"card 2", "data/th/train-00000-of-00001.parquet": b"ab"})
    third = upload_folder(folder, "me/ds", hub, create_pr=True, sleep=lambda s: None)
    assert third.plan.add == ["README.md", "data/th/train-00000-of-00001.parquet"]
    assert third.plan.delete == ["data/th/train-00000-of-00002.parquet", "data/th/train-00001-of-00002.parquet"]
    assert hub.commits[-1][1] is True
    assert sorted(hub.remote) == [".gitattributes", "README.md", "data/th/train-00000-of-00001.parquet"]


def test_retries_transient_errors_only():
    sleeps: list[float] = []
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] <= 3:
            raise [http_error(503), http_error(429), httpx2.ConnectError("reset")][calls["n"] - 1]
        return "ok"

    assert with_retries(flaky, "x", sleep=sleeps.append) == "ok"
    assert sleeps == [2.0, 4.0, 8.0]
    assert not is_transient(http_error(401)) and not is_transient(ValueError("bad"))
    with pytest.raises(HfHubHTTPError):
        with_retries(lambda: (_ for _ in ()).throw(http_error(500)), "x", attempts=3, sleep=sleeps.append)
    assert sleeps[-2:] == [2.0, 4.0]


def test_upload_errors_are_compass_errors(tmp_path):
    folder = make_folder(tmp_path / "f", {"README.md": b"card"})
    hub = FakeHub(fail=[http_error(401)])
    with pytest.raises(CompassError, match="set HF_TOKEN"):
        upload_folder(folder, "me/ds", hub, sleep=lambda s: None)
    hub = FakeHub(fail=[http_error(502), http_error(502)])
    assert upload_folder(folder, "me/ds", hub, sleep=lambda s: None).plan.add == ["README.md"]
    with pytest.raises(CompassError, match="OWNER/NAME"):
        upload_folder(folder, "no-owner", FakeHub())


class RecordingApi:
    """Stands in for HfApi's network methods only; the objects it returns and receives are huggingface_hub's."""

    def __init__(self, tree):
        self.tree, self.calls = tree, []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def list_repo_tree(self, repo_id, **kw):
        self.calls.append(("list_repo_tree", repo_id, kw))
        return iter(self.tree)

    def create_commit(self, repo_id, operations, **kw):
        self.calls.append(("create_commit", repo_id, operations, kw))
        return CommitInfo(commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/1", commit_message="m",
                          commit_description="", oid="1" * 40,
                          pr_url=f"https://huggingface.co/datasets/{repo_id}/discussions/3" if kw["create_pr"]
                          else None)


def test_hf_seam_maps_listing_and_operations(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtokenFAKEtoken")
    folder = make_folder(tmp_path / "f", {"README.md": b"card", "data/th/train-00000-of-00001.parquet": b"rows"})
    sha = hashlib.sha256(b"rows").hexdigest()
    tree = [RepoFolder(path="data", oid="t1"), RepoFolder(path="data/th", oid="t2"),
            RepoFile(path="README.md", oid=git_hash(b"old card"), size=8),
            RepoFile(path="data/th/train-00000-of-00001.parquet", oid="ptr", size=4,
                     lfs={"size": 4, "oid": sha, "pointerSize": 130}),
            RepoFile(path="data/th/train-00000-of-00009.parquet", oid="ptr2", size=4,
                     lfs={"size": 4, "oid": "f" * 64, "pointerSize": 130})]
    client = HfHubClient()
    assert client.api.token == "hf_FAKEtokenFAKEtoken"
    client.api = RecordingApi(tree)
    res = upload_folder(folder, "me/ds", client, private=True, create_pr=True, sleep=lambda s: None)
    assert res.plan.add == ["README.md"] and res.plan.delete == ["data/th/train-00000-of-00009.parquet"]
    assert res.url.endswith("/discussions/3")
    (_, _, create_kw), (_, _, tree_kw), (_, repo, ops, commit_kw) = client.api.calls
    assert create_kw == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert tree_kw == {"repo_type": "dataset", "recursive": True}
    assert repo == "me/ds" and commit_kw["repo_type"] == "dataset" and commit_kw["create_pr"] is True
    assert [type(o) for o in ops] == [CommitOperationAdd, CommitOperationDelete]
    assert ops[0].path_in_repo == "README.md" and Path(ops[0].path_or_fileobj) == folder / "README.md"
    assert ops[1].path_in_repo == "data/th/train-00000-of-00009.parquet"


def test_cli_publish_offline_fails_with_one_line(tmp_path, monkeypatch):
    """Without --to-dir and with HF_HUB_OFFLINE=1 the real HfApi refuses; compass says what to do, no retry."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    db = tmp_path / "c.duckdb"
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "1", "title": "Nike Air Zoom running shoes black", "category": "Shoes > Running"}\n')
    runner = CliRunner()
    for args in (["init"], ["ingest", str(f), "--lang", "en", "--market", "SG"], ["generate"]):
        assert runner.invoke(app, [*args, "--catalog", str(db)]).exit_code == 0
    res = runner.invoke(app, ["publish", "me/ds", "--catalog", str(db)])
    assert res.exit_code != 0 and isinstance(res.exception, CompassError)
    assert "upload to me/ds failed" in str(res.exception) and "--to-dir" in str(res.exception)

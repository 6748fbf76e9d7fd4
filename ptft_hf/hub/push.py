"""The network boundary: create the Hub repo and upload the staged folder, nothing else.

The token is never handled here: `HfApi()` without one makes huggingface_hub resolve it per
request (HF_TOKEN, then the stored `hf auth login`). Errors become one line; should a message
ever quote the token, it is masked before it reaches a log or the terminal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from ptft_hf.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Pushed:
    repo_id: str
    url: str
    commit_url: str | None


def _masked(message: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    first = message.strip().splitlines()[0] if message.strip() else message
    return first.replace(token, "***") if token else first


def push_folder(folder: Path, repo_id: str, private: bool, commit_message: str, revision: str | None = None) -> Pushed:
    """`create_repo` (private unless asked otherwise; an existing repo keeps its visibility), a
    branch when `revision` names one, then one `upload_folder` commit of everything in `folder`."""
    api = HfApi()
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message, revision=revision)
    except Exception as err:  # the network boundary: HTTP, auth, offline mode, permissions
        raise UserError.of("hub.push", f"uploading to '{repo_id}' failed ({type(err).__name__}: {_masked(str(err))})",
                           "check the network and the token's write access; the staged folder is kept: "
                           "retry with ptft-hf-push RUN_DIR") from err
    url = str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")
    commit_url = getattr(commit, "commit_url", None)
    log.info("uploaded %s to %s (%s)%s", folder, url, "private" if private else "public",
             f", commit {commit_url}" if commit_url else "")
    return Pushed(repo_id=repo_id, url=url, commit_url=str(commit_url) if commit_url else None)

"""The two versioned JSON documents (checkpoint config.json, artifact manifest.json) share one reader and one
format/version check (robotstack/core/jsondoc.py); each keeps its own error class and hint."""

from __future__ import annotations

import json

import pytest

from policies.checkpoint import CheckpointError, read_checkpoint_doc
from robotstack.core.errors import ArtifactError
from robotstack.core.manifest import read_manifest


@pytest.mark.parametrize("read, name, error", [(read_checkpoint_doc, "config.json", CheckpointError),
                                               (read_manifest, "manifest.json", ArtifactError)])
def test_versioned_json_documents_fail_the_same_way(tmp_path, read, name, error):
    with pytest.raises(error, match=rf"{name}: missing; "):
        read(tmp_path)
    (tmp_path / name).write_text("{not json")
    with pytest.raises(error, match=rf"{name}: not valid JSON"):
        read(tmp_path)
    (tmp_path / name).write_text("[1, 2]")  # the checkpoint reader used to die with AttributeError here
    with pytest.raises(error, match=rf"{name}: expected a JSON object, got list"):
        read(tmp_path)
    (tmp_path / name).write_text(json.dumps({"format": "something.else", "version": 1}))
    with pytest.raises(error, match=rf"{name}: format 'something.else' version 1, expected 'robotstack\."):
        read(tmp_path)

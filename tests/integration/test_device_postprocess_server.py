"""The GPU target's data path, run on the CPU by the real server: the BLS hands the decoder's logits to the
torch postprocess through DLPack (mask_postprocess "device"), and the answer equals the host path's."""

from __future__ import annotations

import shutil

import pytest

from segment_everything_client import SegmentEverythingClient
from segment_everything_contract import rle

pytestmark = pytest.mark.server


def test_device_postprocess_through_dlpack_matches_the_host_path(
    built_repository, triton_server, triton_server_factory, bus_path, tmp_path
):
    repo = tmp_path / "repo"
    shutil.copytree(built_repository, repo, symlinks=True)
    config = repo / "segment_everything" / "config.pbtxt"
    text = config.read_text()
    assert 'key: "mask_postprocess", value: { string_value: "host" }' in text
    config.write_text(text.replace('string_value: "host"', 'string_value: "device"'))
    device_server = triton_server_factory(repo, env={"OMP_NUM_THREADS": "2"})
    results = []
    for server in (triton_server, device_server):
        with SegmentEverythingClient(server.grpc_url, timeout=300) as client:
            results.append(client.segment_everything(bus_path, max_prompts=12, output="logits"))
    host, device = results
    assert len(host) == len(device) == 12
    differing = 0
    for i in range(len(host)):
        a, b = rle.decode(host.rles[i]), rle.decode(device.rles[i])
        union = (a | b).sum()
        assert union == 0 or (a & b).sum() / union >= 0.999, f"mask {i}"
        differing += int((a != b).sum())
    # Bit-identical with OpenCV's own resize; OpenCV's IPP path (1, 3, 4 channels) moves outline pixels of the
    # random weights' noisy masks by an ulp or so (tests/test_device_masks.py pins both down).
    assert differing <= 1e-4 * 12 * host.image_size[0] * host.image_size[1], differing

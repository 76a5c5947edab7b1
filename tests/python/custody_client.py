#!/usr/bin/env python3
"""A third-party Custody client: Python grpcio over mutual TLS.

Stubs are generated from proto/ by the caller (grpc_tools.protoc) into a
directory given with --stubs. Ingests one file as a camera on the cameras
listener, tries to ingest it for a camera its certificate is not bound to,
then lists and reads it back as an operator on the operators listener.
Prints one JSON object with what happened; exits non-zero on failure.
"""

import argparse
import hashlib
import json
import os
import sys


def channel(grpc, addr, certs, name):
    def read(f):
        with open(os.path.join(certs, f), "rb") as fh:
            return fh.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"),
        private_key=read(name + ".key"),
        certificate_chain=read(name + ".pem"),
    )
    return grpc.secure_channel(
        addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stubs", required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("--cameras-addr", required=True)
    p.add_argument("--operators-addr", required=True)
    p.add_argument("--camera", required=True)
    p.add_argument("--other-camera", required=True)
    p.add_argument("--operator", required=True)
    p.add_argument("--file", required=True)
    a = p.parse_args()
    sys.path.insert(0, a.stubs)

    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp
    from custody.v1 import archive_pb2, archive_pb2_grpc, ingest_pb2, ingest_pb2_grpc

    data = open(a.file, "rb").read()
    digest = hashlib.sha256(data).digest()
    start, end = Timestamp(seconds=1_790_000_000), Timestamp(seconds=1_790_000_002)

    def upload(camera):
        yield ingest_pb2.PutSegmentRequest(
            header=ingest_pb2.SegmentHeader(
                camera_id=camera,
                stream="main",
                start=start,
                end=end,
                media_type="video/mp2t",
                sha256=digest,
                size_bytes=len(data),
            )
        )
        for i in range(0, len(data), 256 * 1024):
            yield ingest_pb2.PutSegmentRequest(chunk=data[i : i + 256 * 1024])
        yield ingest_pb2.PutSegmentRequest(finish=ingest_pb2.SegmentFinish(sha256=digest))

    out = {}
    with channel(grpc, a.cameras_addr, a.certs, a.camera) as ch:
        ingest = ingest_pb2_grpc.IngestServiceStub(ch)
        r = ingest.PutSegment(upload(a.camera), timeout=30)
        out["segment_id"] = r.segment_id
        out["stored_bytes"] = r.stored_bytes
        try:
            ingest.PutSegment(upload(a.other_camera), timeout=30)
            out["other_camera"] = "OK"
        except grpc.RpcError as e:
            out["other_camera"] = e.code().name
            out["other_camera_message"] = e.details()

    with channel(grpc, a.operators_addr, a.certs, a.operator) as ch:
        archive = archive_pb2_grpc.ArchiveServiceStub(ch)
        listed = archive.ListSegments(
            archive_pb2.ListSegmentsRequest(camera_id=a.camera, start=start, end=end),
            timeout=30,
        )
        out["listed"] = [s.segment_id for s in listed.segments]
        body = b"".join(
            m.data
            for m in archive.ReadSegment(
                archive_pb2.ReadSegmentRequest(segment_id=r.segment_id), timeout=30
            )
        )
        out["read_back_identical"] = body == data

    print(json.dumps(out))


if __name__ == "__main__":
    main()

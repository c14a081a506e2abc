"""Starts a protocol server for Cairn's test suite and keeps it up while stdin stays open.

    launch.py s3 PORT            moto's S3 server (supports If-None-Match / If-Match writes)
    launch.py s3-auth PORT       the same, checking every request's credentials against its IAM
    launch.py gcs PORT           gcp-storage-emulator, as published
    launch.py gcs-cas PORT       gcp-storage-emulator with GCS's ifGenerationMatch preconditions

The test process holds this process's stdin; when the tests end, however they end, the pipe closes
and the server exits, so no server outlives its tests.

gcp-storage-emulator ignores ifGenerationMatch, which real GCS enforces and Cairn relies on. The
"gcs-cas" mode adds exactly that documented behaviour to the emulator's upload handlers: a write
whose ifGenerationMatch differs from the object's current generation (0 = absent) fails with
412 conditionNotMet, checked when a simple upload arrives and on each chunk of a resumable one.
The emulator serves one request at a time, so the check and the write cannot interleave with
another writer. Everything else is the emulator's own code.
"""

import os
from http import HTTPStatus
import sys
import threading
import urllib.parse


def serve_s3(port, auth):
    if auth:
        # moto checks signatures and access keys after this many unauthenticated actions.
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()


def add_gcs_preconditions():
    from gcp_storage_emulator import server as srv
    from gcp_storage_emulator.handlers import objects

    conditions = {}  # resumable upload id -> (bucket, object, required generation)

    def generation(storage, bucket, name):
        try:
            return int(storage.get_file_obj(bucket, name)["generation"])
        except Exception:  # NotFound: absent objects have generation 0
            return 0

    def refuse(response):
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json(
            {
                "error": {
                    "code": 412,
                    "message": "At least one of the pre-conditions you specified did not hold.",
                    "errors": [
                        {
                            "domain": "global",
                            "reason": "conditionNotMet",
                            "message": "At least one of the pre-conditions you specified did not hold.",
                        }
                    ],
                }
            }
        )

    def object_name(request):
        if "name" in request.query:
            return request.query["name"][0]
        data = request.data
        if isinstance(data, dict):
            meta = data.get("meta") or data
            return meta.get("name")
        return None

    def insert(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        bucket = request.params["bucket_name"]
        name = object_name(request)
        if want and name is not None and generation(storage, bucket, name) != int(want[0]):
            return refuse(response)
        result = original_insert(request, response, storage, *args, **kwargs)
        if want and request.query.get("uploadType", [""])[0] == "resumable":
            try:
                location = response["Location"]
                upload_id = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)["upload_id"][0]
                conditions[upload_id] = (bucket, name, int(want[0]))
            except (KeyError, IndexError):
                pass
        return result

    def upload_partial(request, response, storage, *args, **kwargs):
        upload_id = (request.query.get("upload_id") or [None])[0]
        cond = conditions.get(upload_id)
        if cond and generation(storage, cond[0], cond[1]) != cond[2]:
            conditions.pop(upload_id, None)
            return refuse(response)
        return original_upload_partial(request, response, storage, *args, **kwargs)

    original_insert = objects.insert
    original_upload_partial = objects.upload_partial
    for _, methods in srv.HANDLERS:
        for method, handler in list(methods.items()):
            if handler is original_insert:
                methods[method] = insert
            elif handler is original_upload_partial:
                methods[method] = upload_partial


def serve_gcs(port, preconditions):
    if preconditions:
        add_gcs_preconditions()
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", port, in_memory=True)
    threading.Thread(target=server.start, daemon=True).start()


def main():
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind in ("s3", "s3-auth"):
        serve_s3(port, kind == "s3-auth")
    elif kind in ("gcs", "gcs-cas"):
        serve_gcs(port, kind == "gcs-cas")
    else:
        sys.exit(f"unknown server kind {kind!r}")
    print(f"ready {kind} {port}", flush=True)
    sys.stdin.read()  # returns at EOF: the test process is gone
    os._exit(0)


if __name__ == "__main__":
    main()

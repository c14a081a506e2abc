"""Starts a protocol server for Cairn's test suite and keeps it up while stdin stays open.

    launch.py s3 PORT            moto's S3 server (supports If-None-Match / If-Match writes)
    launch.py s3-auth PORT       the same, checking every request's credentials against its IAM
    launch.py s3-iam PORT SPEC OUT
                                 moto's S3 server with IAM users made from SPEC (JSON: bucket, and
                                 users: {name: policy document}); their access keys go to OUT
                                 (JSON: {name: [id, secret]}); then every request is checked
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


def serve_s3_iam(port, spec_path, out_path):
    """moto with its IAM enforcement, set up through its own API while enforcement is still off."""
    import json
    import boto3
    import urllib.request

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with open(spec_path) as f:
        spec = json.load(f)
    admin = dict(endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="setup", aws_secret_access_key="setup")
    boto3.client("s3", **admin).create_bucket(Bucket=spec["bucket"])
    iam = boto3.client("iam", **admin)
    keys = {}
    for name, policy in spec["users"].items():
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="cairn", PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName=name)["AccessKey"]
        keys[name] = [k["AccessKeyId"], k["SecretAccessKey"]]
    with open(out_path, "w") as f:
        json.dump(keys, f)
    # From now on every request must be signed by one of those users and allowed by its policy.
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req).read()


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
    elif kind == "s3-iam":
        serve_s3_iam(port, sys.argv[3], sys.argv[4])
    elif kind in ("gcs", "gcs-cas"):
        serve_gcs(port, kind == "gcs-cas")
    else:
        sys.exit(f"unknown server kind {kind!r}")
    print(f"ready {kind} {port}", flush=True)
    sys.stdin.read()  # returns at EOF: the test process is gone
    os._exit(0)


if __name__ == "__main__":
    main()

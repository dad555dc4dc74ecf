"""moto's S3 server answering one request at a time (werkzeug without threads).

moto_server serves each request on its own thread, and its PutObject checks If-None-Match and
then stores the object as two steps without a lock (moto/s3/responses.py, put_object), so two
concurrent create-if-absent requests for one key can both succeed. S3 itself makes the check and
the write one step. Served serially, each request's check and write are one step here too: the
test of the run-numbering race runs against this server.

usage: python moto_serial.py HOST PORT
"""

import sys

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(
        host,
        port,
        DomainDispatcherApplication(create_backend_app),
        threaded=False,
        request_handler=MotoRequestHandler,
    )
